"""A trained run ready to classify and explain images (predictor.py) and the local web page (app.py)."""
