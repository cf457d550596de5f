"""The paper's recipe: MobileNetV3-CaCo, joint focal+LDAM loss, AdamW, 100 epochs.

Every other config is a small override of this one. Override any field on the
command line: ``--config.optimizer.learning_rate=1e-3``.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = model()
    c.data = data()
    c.loss = loss()
    c.optimizer = optimizer()
    c.batch_size = 128  # global, split over all devices
    c.eval_batch_size = 128
    c.num_epochs = 100
    c.num_devices = 0  # 0: all local devices
    c.distributed = False  # multi-host: jax.distributed.initialize() before anything else
    c.cluster = cluster()  # for distributed; empty / 0 / -1: read from the environment
    c.checkpoint = checkpoint()
    c.evaluation = evaluation()
    c.log_every_steps = 20
    c.progress_bar = True
    return c


def model() -> ml_collections.ConfigDict:
    """The network: MobileNetV3-CaCo as the paper builds it, from torchvision's ImageNet weights."""
    c = ml_collections.ConfigDict()
    c.arch = "small"  # small | large | tiny (tests)
    c.attention = "caco"  # se | caco | cbam | seco | eca | none (caco_jax.models.attention.ATTENTION_BLOCKS)
    c.ca_activation = "swish"  # swish (the paper) | hardswish (official CA code)
    # How attention parts SE lacks start: preserve (zero gains: the block starts as the SE it
    # replaces) | plain (random, as the paper most likely) | preserve_channel | preserve_coord
    c.attention_init = "preserve"
    c.dropout = 0.2
    c.bn_momentum = 0.01  # torch convention, as torchvision's MobileNetV3
    # Depthwise convolutions: auto (shifts_vjp on CPU, conv elsewhere) | conv | shifts |
    # shifts_vjp; same parameters, only speed differs (docs/performance.md).
    c.depthwise = "auto"
    c.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
    # torchvision mobilenet_v3_small .pth (full or backbone-only) or a directory from
    # caco-jax convert; "imagenet" fetches torchvision's file once (checked); "" trains from scratch.
    c.pretrained = "weights/mobilenet_v3_small-047dcff4.pth"
    return c


def data() -> ml_collections.ConfigDict:
    """The dataset, its split and the input pipeline."""
    c = ml_collections.ConfigDict()
    # ham10000 | folder (one sub-folder of images per class, in manual_dir) (caco_jax.data.registry.DATASETS)
    c.name = "ham10000"
    c.data_dir = "data/tfds"  # where the TFDS builds live (built on first use)
    c.manual_dir = ""  # raw HAM10000 (Kaggle/Dataverse/ISIC layout), or the class folders, to build from
    c.build_size = 225  # images stored with this short side (aspect kept, never enlarged)
    c.synthetic_images = 0  # >0: generate this many synthetic images instead (demo/tests)
    c.split_by = "lesion"  # lesion (no lesion in two splits) | image (the paper's likely split)
    c.split_seed = 0
    # Leave one acquisition source out: all its images are the test split, the other sources are
    # split into train / validation (e.g. rosendahl, vidir_modern); "" = the ordinary split.
    c.holdout_source = ""
    # Offline copies made before the split (caco_jax.data.offline): none | balance (top every
    # class up to `target` images) | multiple (`multiple` copies of every image). With
    # split_by=image, copies of one photograph land in train and test: a leaky protocol.
    c.offline = offline()
    c.image_size = 224  # network input
    # Decoded training image size; 0: as stored (no CPU resize: the random resized crop on
    # the accelerator is the only resampling; several times cheaper, tools/bench_input.py).
    c.load_size = 0
    c.cache = False  # decode the train split into RAM once (fast GPUs; needs num_workers=0)
    c.num_workers = 0  # grain worker processes (0: in the main process)
    # Which training images an epoch draws: uniform (a permutation, the paper) | balanced
    # (every class equally often, with replacement) | sqrt (class frequency ~ sqrt(count)).
    c.sampling = "uniform"
    # Colour constancy of every image the network sees, in training and at inference alike (evaluate,
    # predict, the page, the exports' graph): none | shades_of_gray (each channel scaled so that the
    # image's Minkowski p-norm illuminant is neutral grey; Finlayson & Trezzi 2004). p >= 1 (1: grey world).
    c.color_constancy = "none"
    c.color_constancy_p = 6.0
    # Crop every image to the square inscribed in its dermatoscope's circular field of view (dark
    # border) when it is decoded, for every split and at inference (caco_jax.data.fov); an image
    # without a dark border is kept whole.
    c.fov_crop = False
    c.augment = augment()  # caco_jax.data.augment.AugmentConfig, every field
    return c


def offline() -> ml_collections.ConfigDict:
    """Offline copies made before the split (none by default: the paper's recipe has none)."""
    c = ml_collections.ConfigDict()
    c.mode = "none"
    c.target = 0
    c.multiple = 1
    c.seed = 0
    return c


def augment() -> ml_collections.ConfigDict:
    """Training augmentation, on the accelerator (every field of AugmentConfig)."""
    c = ml_collections.ConfigDict()
    c.hflip = True  # random horizontal flip (probability 1/2)
    c.vflip = True
    c.rot90 = True  # rotate by k * 90 degrees, k uniform in {0, 1, 2, 3}
    c.brightness = 0.2  # colour jitter strengths (torchvision ColorJitter ranges)
    c.contrast = 0.2
    c.saturation = 0.2
    c.hue = 0.05  # fraction of a turn
    c.scale = (0.35, 1.0)  # random resized crop: crop area / image area
    c.ratio = (3 / 4, 4 / 3)  # crop aspect / image aspect
    c.mixup_alpha = 0.0  # batch mixing in the train step: Beta(alpha, alpha); 0 = off
    c.cutmix_alpha = 0.0
    # Acquisition augmentation (docs/data.md), every part off by default. On the accelerator, in this
    # order after the crop and the flips: blur, gamma, channel gains, field-of-view mask.
    c.gamma = (1.0, 1.0)  # x ** g, g log-uniform in (lo, hi), 0 < lo <= hi; (1, 1): off
    c.channel_gain = 0.0  # x >= 0: per-channel gains log-uniform in [1 / (1 + x), 1 + x]; 0: off
    c.blur_p = 0.0  # Gaussian blur with this probability,
    c.blur_sigma = (0.5, 1.5)  # sigma uniform in this range, in output pixels (0 < lo <= hi <= 5)
    c.fov_p = 0.0  # circular field-of-view mask (dark outside a disc) with this probability:
    c.fov_radius = (1.0, 1.4)  # radius / half the side (1: touches the sides; 1.414: reaches the corners)
    c.fov_softness = (0.0, 0.1)  # width of the soft edge / radius, in [0, 1]
    c.fov_shift = 0.0  # centre moved by up to this fraction of half the side, along each axis
    c.zoom_p = 0.0  # zoom out instead of the crop with this probability: the whole image shrunk
    c.zoom_out = (1.0, 1.5)  # by a side factor in this range (1 <= lo <= hi <= 2), border mirrored
    c.jpeg_p = 0.0  # JPEG re-compression on the host (training pipeline) with this probability,
    c.jpeg_quality = (30, 95)  # quality uniform in this range (whole numbers in [1, 100])
    return c


def loss() -> ml_collections.ConfigDict:
    """The loss (a registered name) and the fields of every registered loss."""
    c = ml_collections.ConfigDict()
    c.name = "joint"  # ce | focal | ldam | joint (caco_jax.training.losses.LOSSES)
    c.label_smoothing = 0.0  # ce only
    c.focal_gamma = 2.0
    # None | a float | one float per class. Fixed type: overriding from the command line
    # needs a Python literal, e.g. --config.loss.focal_alpha=0.25
    c.focal_alpha = ml_collections.FieldReference(None, field_type=object)
    c.ldam_max_m = 0.5
    c.ldam_s = 1.0  # logit scale; 1 with our plain linear head (docs/model.md, tools/measure_ldam_scale.py)
    c.joint_a = 0.5  # joint = a * focal + (1 - a) * LDAM
    c.drw_epoch = -1  # -1: off; else the 0-based epoch from which DRW applies
    c.drw_beta = 0.9999
    return c


def optimizer() -> ml_collections.ConfigDict:
    """AdamW with a constant learning rate, as the paper."""
    c = ml_collections.ConfigDict()
    c.learning_rate = 5e-4
    c.weight_decay = 5e-2
    c.weight_decay_mask = "all"  # all (torch AdamW) | exclude_norm_bias
    c.b1 = 0.9
    c.b2 = 0.999
    c.eps = 1e-8
    c.schedule = "constant"  # constant (the paper) | cosine
    c.warmup_epochs = 0.0
    c.ema_decay = 0.0  # >0: evaluate and keep a moving average of the weights (e.g. 0.998)
    return c


def cluster() -> ml_collections.ConfigDict:
    """Where the processes of a multi-host run find each other."""
    c = ml_collections.ConfigDict()
    c.coordinator_address = ""  # e.g. "10.0.0.1:1234"
    c.num_processes = 0
    c.process_id = -1
    return c


def checkpoint() -> ml_collections.ConfigDict:
    """When checkpoints are written and how many are kept."""
    c = ml_collections.ConfigDict()
    c.every_epochs = 1
    c.every_steps = 0  # >0: also save every N steps (long epochs, preemptible machines)
    c.keep = 3
    return c


def evaluation() -> ml_collections.ConfigDict:
    """What the end of training saves and which decision rule the commands use."""
    c = ml_collections.ConfigDict()
    # Also save the 8 dihedral views' logits of the validation and test splits at the end
    # (predictions_<split>_tta.npz), for test-time augmentation.
    c.tta = False
    # The balanced decision rule fitted on the validation split at the end of training
    # (best/decision.json): logit_adjustment (one parameter, tau) | offsets (one per class).
    c.decision_fit = "logit_adjustment"
    # Which rule evaluate / predict / the web page use unless told otherwise: argmax | balanced.
    c.decision = "argmax"
    return c
