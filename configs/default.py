"""Every config field of a jaxdd run, with its default. Other configs import and override this.

Run: python -m jaxdd.main --config=configs/<name>.py [--config.field=value ...] [--workdir=DIR]
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # The one seed of the run: clustering, sampling, init and evaluation keys.
    config.ipc = 10  # Synthetic images per class.
    config.num_steps = 1000  # Synthetic-set updates.

    config.data = ml_collections.ConfigDict()
    config.data.name = "digits"  # digits | fashion_mnist | mnist | tfds:<name> | npz:<path>.
    config.data.dir = ""  # Data directory (IDX files or TFDS data_dir); '' = the default.
    config.data.validation_fraction = 0.1  # Carved from train, stratified; used for selection.
    config.data.test_fraction = 0.2  # Carved from the data only where no test split exists.
    config.data.rare = ""  # Rare-subpopulation benchmark: invert | rotate90 | blur; '' = off.
    config.data.rare_fraction = 0.05  # Share of each class's train images in its minority.

    config.model = ml_collections.ConfigDict()
    config.model.name = "convnet"  # convnet | mlp | resnet18 | vgg11.
    config.model.width = 128  # Channels (ConvNet) or hidden units (MLP).
    config.model.depth = 3  # ConvNet blocks / MLP layers.
    config.model.norm = "instance"  # instance | group | none (no running statistics).

    config.cluster = ml_collections.ConfigDict()
    config.cluster.num_clusters = 4  # K subgroups per class (C*K groups in all).
    config.cluster.features = "pixels"  # pixels | random_net: the K-means feature space.
    config.cluster.num_iters = 50  # Lloyd iterations.

    config.match = ml_collections.ConfigDict()
    config.match.family = "gradient"  # gradient | distribution | risk.
    config.match.num_real = 64  # m: real samples drawn per group per step.
    config.match.augment = "color_crop_cutout_flip_scale_rotate"  # DSA strategy; 'none' = off.
    # Groups vmapped together, 0 = all (speed and memory only; see jaxdd.matching). Chunks of
    # 8 bound memory at 28x28 and up: all 40 groups at once needed 8 GiB of XLA temporaries at
    # 28x28 and 21 GiB at 32x32x3 (IPC 1), chunks of 8 need 1.9 and 4.3 GiB.
    config.match.group_batch = 0
    config.match.net_reset_every = 10  # Re-initialise the matched network every N steps.
    config.match.net_train_steps = 50  # Network SGD steps on the synthetic set after an update.
    config.match.net_lr = 0.01  # Learning rate of that network training.
    config.match.unroll_steps = 10  # risk family: T unrolled SGD steps.
    config.match.unroll_lr = 0.01  # risk family: learning rate of the unrolled steps.
    config.match.unroll_remat = "nested"  # risk family: nested (O(sqrt T) memory) | step | none.

    config.robust = ml_collections.ConfigDict()
    config.robust.risk = "cvar"  # mean (ERM) | cvar | max | mean+max.
    config.robust.alpha = 0.5  # CVaR tail mass in (0, 1]; 1 = mean.

    config.syn = ml_collections.ConfigDict()
    config.syn.init = "real"  # real (random real images) | noise | random | herding | k_center.
    config.syn.lr = 0.1  # Learning rate of the synthetic images (SGD with momentum, as DC).
    config.syn.momentum = 0.5

    config.eval = ml_collections.ConfigDict()
    config.eval.num_models = 5  # Networks trained from scratch on the synthetic set.
    config.eval.epochs = 300  # Training epochs of each network.
    config.eval.batch_size = 256
    config.eval.lr = 0.01  # SGD momentum 0.9, decayed x0.1 at half.
    config.eval.momentum = 0.9
    config.eval.weight_decay = 5e-4
    config.eval.augment = "color_crop_cutout_flip_scale_rotate"  # DSA while training; 'none'.
    config.eval.architectures = ""  # Extra comma-separated models for cross-architecture eval.
    config.eval.select_every = (
        0  # Validation eval every N steps to select the reported set; 0 = last.
    )
    config.eval.select_num_models = 2  # Networks per validation eval.
    config.eval.global_k = 10  # Test-set K-means groups over all classes (pixels), as the paper.
    config.eval.per_class_k = 4  # Test-set K-means groups within each class.
    config.eval.cache_dir = ""  # Cache of test partitions; '' = ~/.cache/jaxdd/partitions.
    config.eval.shifts = ml_collections.ConfigDict(
        {"gaussian_noise": 0.1, "gaussian_blur": 1.0, "invert": 0.0, "contrast": 0.5}
    )  # Shifted test sets: name -> strength (noise sigma and blur sigma in [0,1] pixels).

    config.distributed = ml_collections.ConfigDict()
    # Devices the step's groups are split over (a one-axis mesh); 0 = every device of the run.
    config.distributed.num_devices = 0
    # Multi-host: jax.distributed.initialize settings; '' = one process (no initialisation).
    config.distributed.coordinator_address = ""  # host:port of process 0.
    config.distributed.num_processes = 1
    config.distributed.process_id = 0

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 50  # Orbax checkpoint of the full state every N steps.

    config.log = ml_collections.ConfigDict()
    config.log.every_steps = 10  # Metrics to metrics.jsonl every N steps.
    return config
