"""The paper's recipe: MobileNetV3-CaCo, joint focal+LDAM loss, AdamW, 100 epochs.

Every other config is a small override of this one. Override any field on the
command line: ``--config.optimizer.learning_rate=1e-3``.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.arch = "small"  # small | large | tiny (tests)
    c.model.attention = "caco"  # se | caco | cbam | seco | eca | none
    c.model.ca_activation = "swish"  # swish (the paper) | hardswish (official CA code)
    # How attention parts SE lacks start: preserve (zero gains: the block starts as the SE it
    # replaces) | plain (random, as the paper most likely) | preserve_channel | preserve_coord
    c.model.attention_init = "preserve"
    c.model.dropout = 0.2
    c.model.bn_momentum = 0.01  # torch convention, as torchvision's MobileNetV3
    # Depthwise convolutions: auto (shifts_vjp on CPU, conv elsewhere) | conv | shifts |
    # shifts_vjp; same parameters, only speed differs (docs/performance.md).
    c.model.depthwise = "auto"
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
    # torchvision mobilenet_v3_small .pth (full or backbone-only) or a directory from
    # caco-jax convert; "imagenet" fetches torchvision's file once (checked); "" trains from scratch.
    c.model.pretrained = "weights/mobilenet_v3_small-047dcff4.pth"

    c.data = ml_collections.ConfigDict()
    c.data.name = "ham10000"  # ham10000 | folder (one sub-folder of images per class, in manual_dir)
    c.data.data_dir = "data/tfds"  # where the TFDS builds live (built on first use)
    c.data.manual_dir = ""  # raw HAM10000 (Kaggle/Dataverse/ISIC layout), or the class folders, to build from
    c.data.build_size = 225  # images stored with this short side (aspect kept, never enlarged)
    c.data.synthetic_images = 0  # >0: generate this many synthetic images instead (demo/tests)
    c.data.split_by = "lesion"  # lesion (no lesion in two splits) | image (the paper's likely split)
    c.data.split_seed = 0
    # Leave one acquisition source out: all its images are the test split, the other sources are
    # split into train / validation (e.g. rosendahl, vidir_modern); "" = the ordinary split.
    c.data.holdout_source = ""
    # Offline copies made before the split (caco_jax.data.offline): none | balance (top every
    # class up to `target` images) | multiple (`multiple` copies of every image). With
    # split_by=image, copies of one photograph land in train and test: a leaky protocol.
    c.data.offline = ml_collections.ConfigDict()
    c.data.offline.mode = "none"
    c.data.offline.target = 0
    c.data.offline.multiple = 1
    c.data.offline.seed = 0
    c.data.image_size = 224  # network input
    # Decoded training image size; 0: as stored (no CPU resize: the random resized crop on
    # the accelerator is the only resampling; several times cheaper, tools/bench_input.py).
    c.data.load_size = 0
    c.data.cache = False  # decode the train split into RAM once (fast GPUs; needs num_workers=0)
    c.data.num_workers = 0  # grain worker processes (0: in the main process)
    # Which training images an epoch draws: uniform (a permutation, the paper) | balanced
    # (every class equally often, with replacement) | sqrt (class frequency ~ sqrt(count)).
    c.data.sampling = "uniform"
    c.data.augment = ml_collections.ConfigDict()  # caco_jax.data.augment.AugmentConfig, every field
    c.data.augment.hflip = True  # random horizontal flip (probability 1/2)
    c.data.augment.vflip = True
    c.data.augment.rot90 = True  # rotate by k * 90 degrees, k uniform in {0, 1, 2, 3}
    c.data.augment.brightness = 0.2  # colour jitter strengths (torchvision ColorJitter ranges)
    c.data.augment.contrast = 0.2
    c.data.augment.saturation = 0.2
    c.data.augment.hue = 0.05  # fraction of a turn
    c.data.augment.scale = (0.35, 1.0)  # random resized crop: crop area / image area
    c.data.augment.ratio = (3 / 4, 4 / 3)  # crop aspect / image aspect
    c.data.augment.mixup_alpha = 0.0  # batch mixing in the train step: Beta(alpha, alpha); 0 = off
    c.data.augment.cutmix_alpha = 0.0

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "joint"  # ce | focal | ldam | joint (caco_jax.training.losses.LOSSES)
    c.loss.label_smoothing = 0.0  # ce only
    c.loss.focal_gamma = 2.0
    # None | a float | one float per class. Fixed type: overriding from the command line
    # needs a Python literal, e.g. --config.loss.focal_alpha=0.25
    c.loss.focal_alpha = ml_collections.FieldReference(None, field_type=object)
    c.loss.ldam_max_m = 0.5
    c.loss.ldam_s = 1.0  # logit scale; 1 with our plain linear head (docs/model.md, tools/measure_ldam_scale.py)
    c.loss.joint_a = 0.5  # joint = a * focal + (1 - a) * LDAM
    c.loss.drw_epoch = -1  # -1: off; else the 0-based epoch from which DRW applies
    c.loss.drw_beta = 0.9999

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 5e-4
    c.optimizer.weight_decay = 5e-2
    c.optimizer.weight_decay_mask = "all"  # all (torch AdamW) | exclude_norm_bias
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.schedule = "constant"  # constant (the paper) | cosine
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.ema_decay = 0.0  # >0: evaluate and keep a moving average of the weights (e.g. 0.998)

    c.batch_size = 128  # global, split over all devices
    c.eval_batch_size = 128
    c.num_epochs = 100
    c.num_devices = 0  # 0: all local devices
    c.distributed = False  # multi-host: jax.distributed.initialize() before anything else
    c.cluster = ml_collections.ConfigDict()  # for distributed; empty / 0 / -1: read from the environment
    c.cluster.coordinator_address = ""  # e.g. "10.0.0.1:1234"
    c.cluster.num_processes = 0
    c.cluster.process_id = -1

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_epochs = 1
    c.checkpoint.every_steps = 0  # >0: also save every N steps (long epochs, preemptible machines)
    c.checkpoint.keep = 3

    c.evaluation = ml_collections.ConfigDict()
    # Also save the 8 dihedral views' logits of the validation and test splits at the end
    # (predictions_<split>_tta.npz), for test-time augmentation.
    c.evaluation.tta = False
    # The balanced decision rule fitted on the validation split at the end of training
    # (best/decision.json): logit_adjustment (one parameter, tau) | offsets (one per class).
    c.evaluation.decision_fit = "logit_adjustment"
    # Which rule evaluate / predict / the web page use unless told otherwise: argmax | balanced.
    c.evaluation.decision = "argmax"

    c.log_every_steps = 20
    c.progress_bar = True
    return c
