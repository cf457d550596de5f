"""A trained model in use: a run ready to classify and explain images (predictor.py), an exported model
(portable.py), image files and folders classified (classify.py) and the local web page (app.py)."""
