"""Every config field of a jaxdd run, with its default. Other configs import and override this.

Run: python -m jaxdd.main --config=configs/<name>.py[:method] [--config.field=value ...]

`method` names the published method whose settings a config starts from (`METHODS`): 'dsa'
(the default: DC's gradient matching with differentiable siamese augmentation, Zhao & Bilen
2021), 'dc' (the same without augmentation, Zhao et al. 2021), 'dm' (distribution
matching, Zhao & Bilen 2023), 'idc' (Kim et al. 2022: factorized f = 2 sets matched by
DSA gradient matching on networks trained on real data) or 'idm' (Zhao et al. 2023:
factorized f = 2 sets matched by distribution matching through a pool of networks trained on
real data, with a cross-entropy regulariser). Each takes the learning rates, schedule,
iteration count and evaluation of its paper's code (`VICO-UoE/DatasetCondensation`:
`main.py`, `main_DM.py`, `utils.py` `get_loops` / `evaluate_synset`;
`snu-mllab/Efficient-Dataset-Condensation`: `argument.py`, `misc/reproduce.py`,
`condense.py`; `uitrbn/IDM`: `IDM_cifar10.py`, `command.txt`); a dataset's config may
shorten the budget.
"""

import ml_collections

from jaxdd import augment

METHODS = ("dc", "dsa", "dm", "idc", "idm")
DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"  # DSA's ParamDiffAug strategy.


# IDC's matching per dataset (`misc/reproduce.py` 13-33): distance and lr_img in its [0, 1]
# pixel units, and the dataset's pixel std (mean over channels), since jaxdd's images are
# standardised and the same step there is syn.lr = lr_img / std^2. Digits (not in IDC) takes
# Fashion-MNIST's recipe at its own std; other data (npz:, folder:, tfds: names not listed)
# takes Fashion-MNIST's entry: set syn.lr = lr_img / std^2 for yours.
IDC_MATCHING = {
    "fashion_mnist": ("l1", 1e-4, 0.3530),
    "mnist": ("l1", 1e-4, 0.3081),
    "digits": ("l1", 1e-4, 0.3760),
    "tfds:svhn_cropped": ("mse", 5e-3, 0.1987),
    "tfds:cifar10": ("mse", 5e-3, 0.2507),
}


def get_config(method: str = "dsa", dataset: str = "digits") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # The one seed of the run: clustering, sampling, init and evaluation keys.
    config.ipc = 10  # Synthetic images per class.
    # Iterations as DC counts them (its --Iteration): each a fresh network and
    # match.outer_loop updates of the synthetic set (see jaxdd.step).
    config.num_iterations = 1000

    config.data = ml_collections.ConfigDict()
    # digits | fashion_mnist | mnist | tfds:<name> | npz:<path> | folder:<path>.
    config.data.name = dataset
    config.data.dir = ""  # Data directory (IDX files or TFDS data_dir); '' = the default.
    # Resize folder images to this square size (bilinear); 0 = keep their size, which must then
    # be equal.
    config.data.image_size = 0
    config.data.validation_fraction = 0.1  # Carved from train, stratified; used for selection.
    config.data.test_fraction = 0.2  # Carved from the data only where no test split exists.
    config.data.rare = ""  # Rare-subpopulation benchmark: invert | rotate90 | blur; '' = off.
    config.data.rare_fraction = 0.05  # Share of each class's train images in its minority.
    # Spurious-correlation benchmark (Colored-MNIST style, jaxdd.data.spurious): color | '' = off.
    # Train/validation images wear their class's colour but for a conflict_fraction of each
    # class (another class's colour); test colours are uniformly random.
    config.data.spurious = ""
    config.data.conflict_fraction = 0.05

    config.model = ml_collections.ConfigDict()
    config.model.name = "convnet"  # convnet | mlp | resnet18 | vgg11.
    config.model.width = 128  # Channels (ConvNet) or hidden units (MLP).
    config.model.depth = 3  # ConvNet blocks / MLP layers.
    config.model.norm = "instance"  # instance | group | none (no running statistics).
    # ConvNet: zero padding before the first conv; -1 = DC's rule (2, i.e. a padding-3 conv,
    # on 1-channel images: 28x28 -> 32; 0 otherwise).
    config.model.stem_pad = -1
    config.model.init = "torch"  # torch (PyTorch's default, as DC) | lecun (flax's default).

    config.cluster = ml_collections.ConfigDict()
    config.cluster.num_clusters = 4  # K subgroups per class (C*K groups in all).
    config.cluster.features = "pixels"  # pixels | random_net: the K-means feature space.
    config.cluster.num_iters = 50  # Lloyd iterations.
    # kmeans (K-means groups, computed once) | voronoi (the reference code's: the Voronoi cells of
    # each class's ipc synthetic images among cluster.pool real images of the class, in the
    # matched network's embedding, recomputed every update; num_clusters is then unused).
    config.cluster.assign = "kmeans"
    config.cluster.pool = 256  # voronoi: real images per class per update (DC's batch_real).

    config.match = ml_collections.ConfigDict()
    config.match.family = "gradient"  # gradient | distribution | risk | krr.
    # m: real samples drawn per group per update; K * m = 256 is DC's batch_real per class.
    config.match.num_real = 64
    config.match.augment = DSA_STRATEGY  # DSA strategy; 'none' = off.
    # single (DSA's mode 'S': one family per draw) | all | idc (IDC's DiffAug: flip and color
    # on every batch, one other family drawn, then cutout). The network's training batches use
    # the same mode, with parameters per image.
    config.match.augment_mode = "single"
    # Gradient family: dc (DC's layer-wise cosine) | l1 | mse (IDC's sums over elements; set
    # syn.lr for them, see IDC_MATCHING). Matched parameters: weights (DC: conv and dense
    # kernels) | conv (IDC's bias=False fc=False: conv kernels only).
    config.match.distance = "dc"
    config.match.distance_layers = "weights"
    # Groups vmapped together, 0 = all (speed and memory only; see jaxdd.matching). Chunks of
    # 8 bound memory at 28x28 and up: all 40 groups at once needed 8 GiB of XLA temporaries at
    # 28x28 and 21 GiB at 32x32x3 (IPC 1), chunks of 8 need 1.9 and 4.3 GiB.
    config.match.group_batch = 0
    # DC's schedule per iteration: outer_loop image updates, each but the last followed by
    # inner_loop epochs of the network on the synthetic set. -1 = DC's get_loops(ipc) for the
    # gradient family (1 -> 1/1, 10 -> 10/50, 50 -> 50/10), 1/0 for the others.
    config.match.outer_loop = -1
    config.match.inner_loop = -1
    config.match.inner_batch = 256  # DC's batch_train for those epochs.
    # What the matched network trains on between updates: synthetic (DC) | real (IDC's: each
    # inner epoch, match.net_data random real images in minibatches of match.inner_batch, with
    # CutMix at probability match.net_cutmix; IDC's settings: outer_loop=100 inner_loop=1
    # inner_batch=64 net_momentum=0.9 net_weight_decay=0.0005) | real_robust (the reference
    # code's, fixed: one step per inner epoch on the update's real pool with mean CE + mean and
    # max over the Voronoi cells of each cell's CVaR(robust.alpha); needs cluster.assign=voronoi).
    config.match.net_train = "synthetic"
    config.match.net_lr = 0.01  # DC's lr_net (plain SGD).
    config.match.net_momentum = 0.0  # SGD momentum of the matched network (DC 0, IDC 0.9).
    # The matched network's optimiser at match.net_lr: sgd (DC's, with match.net_momentum) |
    # adam (FRePo trains its pool with Adam at lr 3e-4; net_momentum unused).
    config.match.net_optimizer = "sgd"
    config.match.net_weight_decay = 0.0  # Its weight decay (DC 0, IDC 5e-4).
    config.match.net_data = 500  # net_train=real: real images per inner epoch (IDC's n_data).
    config.match.net_cutmix = 0.5  # net_train=real: CutMix per batch (IDC mix_p, non-ImageNet).
    # Augmentation of the matched network's training batches (per image): '' = match.augment
    # (without cutout under CutMix, as IDC), or a DSA strategy, or 'none' (IDM's real batches).
    config.match.net_augment = ""
    config.match.unroll_steps = 10  # risk family: T unrolled SGD steps.
    # risk family: learning rate of the unrolled SGD steps. 0.1, chosen on validation (digits
    # IPC 10, benchmarks/results/risk_calibration.md: 97.0 % against 95.6 % at 0.01, where ten
    # steps hardly train the network; learning it from 0.01 finds 0.090).
    config.match.unroll_lr = 0.1
    config.match.unroll_remat = "nested"  # risk family: nested (O(sqrt T) memory) | step | none.
    # risk family, truncated (RaT-BPTT): back-propagate only the last unroll_window steps of an
    # unroll whose length is drawn in [window, unroll_steps] every update; 0 = all steps.
    config.match.unroll_window = 0
    config.match.unroll_optimizer = "sgd"  # risk family: inner optimiser, sgd | adam.
    # Networks that outlive their iteration (FRePo's pool): 0 = a fresh network every
    # iteration (DC, DM); P > 0 = P networks trained online on the synthetic set, one drawn per
    # iteration, each re-initialised after net_max_updates updates (FRePo: 10 and 100). The
    # risk family then unrolls from the drawn network instead of a fresh one.
    config.match.net_pool = 0
    config.match.net_max_updates = 100
    config.match.krr_ridge = 1e-6  # krr family: ridge, times the kernel's mean diagonal.
    # distribution family: IDM's class-aware regulariser, the weight of the network's
    # cross-entropy on the synthetic images times its accuracy (%) on the real group
    # (jaxdd.matching.distribution); 0 = DM's pure matching. IDM: 0.5 at IPC 1 and 10, 0.1 at 50.
    config.match.syn_ce = 0.0
    # The accuracy that weighs the regulariser: 'group' (the network's on the group's augmented
    # real batch, each group its own) or 'running' (IDM's: the pooled network's running top-1
    # on its real training batches since its initialisation or the last reset, one weight for
    # every group; needs match.net_pool > 0 and match.net_train='real'). A fresh network's
    # per-group accuracy is degenerate (0 on most classes, up to 100 % on one).
    config.match.syn_ce_accuracy = "group"
    # 'running': every pool network's meter is emptied every N iterations (IDM's eval_interval,
    # after which its loop resets them); 0 = never.
    config.match.syn_ce_reset = 100

    config.robust = ml_collections.ConfigDict()
    # mean (ERM: the C*K group losses with equal weight, a subgroup counting whatever its size;
    # with cluster.num_clusters=1 and match.num_real=256, DC's / DM's per-class objective) |
    # cvar | max | mean+max.
    config.robust.risk = "cvar"
    config.robust.alpha = 0.5  # CVaR tail mass in (0, 1]; 1 = mean.

    config.syn = ml_collections.ConfigDict()
    # groups (random real images spread over the K subgroups of each class,
    # jaxdd.synthetic.group_quota) | real (random real images, DC's) | noise | random | herding |
    # k_center | mix (IDC's, for syn.param=factorized). groups, chosen on validation splits
    # (benchmarks/results/defaults.md, labels.md): digits+rare validation minority 100 / 86.7 %
    # against 83.3 / 73.3 from real images (robust, 2 seeds), plain digits validation accuracy
    # +0.2 (IPC 10, 2 seeds) and -0.1 (IPC 1, 3 seeds).
    config.syn.init = "groups"
    # How stored images become training images: pixels (one each) | factorized (IDC's
    # multi-formation: syn.factor x syn.factor crops of each, upsampled; ipc counts stored images).
    config.syn.param = "pixels"
    config.syn.factor = 1
    # IDC's batch_syn_max: each update matches at most this many decoded images per class,
    # drawn afresh (binds when factor^2 * ipc > 128, e.g. factorized f = 2 at IPC 50); 0: all.
    config.syn.max_decoded = 128
    # Clip the stored images to valid pixels ([0, 1] before normalisation) at the start of every
    # iteration, as IDC does (`condense.py` 521; the `idc` method sets it); not for generators.
    config.syn.clip_pixels = False
    # syn.param=generator (GLaD's interface): images = G(latents), G a flax Module
    # ('package.module:Name', built without arguments) with parameters written by
    # flax.serialization.to_bytes; the latents (latent_dim each, drawn N(0, 1): syn.init=noise)
    # are learned; G too with learn_generator (GLaD's learn_g), at its own learning rate (SGD,
    # syn.momentum; not tuned yet), and the learned G is written to workdir/generator.msgpack.
    config.syn.generator = ""
    config.syn.generator_checkpoint = ""
    config.syn.latent_dim = 0
    config.syn.learn_generator = False
    config.syn.generator_lr = 0.01
    # Learned soft labels: per stored image C logits (initially the log of its one-hot label
    # smoothed by 0.1), trained with the images at their own learning rate (SGD, syn.momentum;
    # not tuned yet); every network trains on their softmax. Gradient and risk families only.
    config.syn.learn_labels = False
    config.syn.label_lr = 0.1
    # Risk family: learn the unroll's learning rate (its log, from match.unroll_lr) with the
    # set, as Wang et al.'s dataset distillation learns its step size; SGD/Adam on the log at
    # its own rate (not tuned yet). The evaluation keeps its own protocol.
    config.syn.learn_unroll_lr = False
    config.syn.unroll_lr_lr = 0.01
    # lr_img (SGD with momentum 0.5, as DC); the objective is on DC's scale (jaxdd.step).
    config.syn.lr = 0.1
    config.syn.momentum = 0.5
    # The set's optimiser: sgd (with syn.momentum, DC's) | adam (optax defaults, RaT-BPTT's
    # outer loop: Adam at lr 0.001) | lamb (FRePo's, at lr 3e-4); syn.momentum only for sgd.
    config.syn.optimizer = "sgd"

    config.eval = ml_collections.ConfigDict()
    config.eval.num_models = 5  # Networks trained from scratch on the synthetic set.
    config.eval.epochs = 1000  # Training epochs of each network (DC/DSA/DM: 1000 with aug).
    config.eval.batch_size = 256
    config.eval.lr = 0.01  # SGD momentum 0.9, decayed x0.1 at half.
    config.eval.momentum = 0.9
    config.eval.weight_decay = 5e-4
    config.eval.augment = DSA_STRATEGY  # DSA while training; 'none'.
    # IDC's evaluation protocol (to compare with IDC's published numbers at equal evaluation;
    # the `idc` method sets it): augment=color_crop_flip_scale_rotate (IDC drops cutout with
    # CutMix), augment_mode=idc, lr_schedule=idc, cutmix=0.5, batch_size=64, epochs=1000. The
    # defaults are DC/DSA/DM's: one DSA family per batch, lr x0.1 at half, no CutMix.
    # single (DSA) | all | idc (flip, color and cutout on every batch when listed, one other drawn).
    config.eval.augment_mode = "single"
    # dc (x0.1 at half) | idc (x0.2 at 2/3 and 5/6 of epochs) | frepo (500 warm-up steps, then
    # cosine to 0.01x).
    config.eval.lr_schedule = "dc"
    # FRePo's evaluation protocol (yongchao97/FRePo script/eval.py; jaxdd.config.frepo_evaluation
    # and `jaxdd evaluate --protocol=frepo` set it):
    # optimizer=adam (momentum 0), lr=3e-4, weight_decay=0, loss=mse (to centred one-hot or
    # soft labels), lr_schedule=frepo, network=frepo, batch_size=500, its step count as
    # epochs, its augmentation without flips. The defaults are DC/DSA/DM's.
    config.eval.optimizer = "sgd"  # sgd (with eval.momentum) | adam.
    config.eval.loss = "ce"  # ce (cross-entropy) | mse (FRePo's regression to centred labels).
    config.eval.network = ""  # '' = the distillation network (model.*) | frepo (widening, no norm).
    config.eval.cutmix = 0.0  # Probability of IDC's CutMix per batch; 0 = off.
    config.eval.cutmix_beta = 1.0  # CutMix's Beta(beta, beta) mixing ratio.
    # IDC's same_compute: a factorized set trains eval.epochs / factor^2 epochs (as many steps
    # as its stored images would take).
    config.eval.same_compute = False
    config.eval.architectures = ""  # Extra comma-separated models for cross-architecture eval.
    config.eval.select_every = 0  # Validation eval every N iterations to select the set; 0 = last.
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
    config.checkpoint.every = 10  # Orbax checkpoint of the full state every N iterations.

    config.log = ml_collections.ConfigDict()
    config.log.every = 10  # Metrics to metrics.jsonl every N iterations.
    return apply_method(config, method)


def apply_method(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
    """The settings of the published `method` (see the module docstring) on `config`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} after the config file's ':'; use {METHODS}.")
    if method == "dc":
        # DC matches and trains without augmentation; its evaluation then trains 300 epochs
        # (main.py 111-123; DC's own non-differentiable augmentation is only for MNIST).
        config.match.augment = "none"
        config.eval.augment = "none"
        config.eval.epochs = 300
    elif method == "dm":
        config.match.family = "distribution"  # A fresh random network every iteration.
        config.syn.lr = 1.0  # main_DM.py: lr_img 1.0, 20,000 iterations.
        config.num_iterations = 20000
        config.checkpoint.every = 500
        config.log.every = 100
    elif method == "idc":
        # IDC's Fashion-MNIST/MNIST/SVHN/CIFAR recipe (`misc/reproduce.py` set_arguments,
        # `argument.py` defaults, `condense.py` 489-555): multi-formation f = 2 from its `mix`
        # initialisation; 2000 iterations of a fresh ConvNet-3 matched by 100 updates, each
        # followed by 500 real images (batch 64, CutMix at mix_p 0.5, SGD lr 0.01 momentum 0.9
        # wd 5e-4); 64 real images per class per update (batch_real: 16 per group at the
        # dataset configs' K = 4). Matching as IDC's (`condense.py` 356-430, `argument.py`
        # 175-191): its DiffAug 'color_crop_cutout' shared by the real and synthetic batch,
        # the per-dataset distance and image step of IDC_MATCHING on the conv kernels' gradients.
        config.match.augment, config.match.augment_mode = "color_crop_cutout", "idc"
        distance, lr_img, std = IDC_MATCHING.get(config.data.name, IDC_MATCHING["fashion_mnist"])
        config.match.distance, config.match.distance_layers = distance, "conv"
        config.syn.lr = lr_img / std**2
        config.syn.param, config.syn.factor, config.syn.init = "factorized", 2, "mix"
        config.syn.clip_pixels = True
        config.match.net_train = "real"
        config.match.outer_loop, config.match.inner_loop, config.match.inner_batch = 100, 1, 64
        config.match.net_momentum, config.match.net_weight_decay = 0.9, 5e-4
        config.match.net_data, config.match.net_cutmix = 500, 0.5
        config.match.num_real = 16
        config.num_iterations = 2000
        config.checkpoint.every = 1
        config.log.every = 1
        # IDC's evaluation (`train.py`, `argument.py` 436-456): DiffAug with flip and color on
        # every batch and one of crop/scale/rotate (cutout dropped: CutMix at 0.5), batch 64,
        # 1000 epochs, x0.2 at 2/3 and 5/6 of them.
        config.eval.augment = "color_crop_flip_scale_rotate"
        config.eval.augment_mode, config.eval.lr_schedule = "idc", "idc"
        config.eval.cutmix, config.eval.batch_size, config.eval.epochs = 0.5, 64, 1000
    elif method == "idm":
        # IDM's CIFAR-10 IPC 10 command (`uitrbn/IDM` `command.txt`; `IDM_cifar10.py`): the
        # set partitioned and expanded (`--aug`: number_sign_augment, i.e. factorized f = 2,
        # initialised with four downscaled real images, 138-145), lr_img 0.2 with momentum 0.5
        # (154), DM's loss on DSA-augmented batches of 256 real images per class plus the
        # cross-entropy regulariser at ce_weight 0.5 (318-327), matched through one network of
        # a queue trained on real data (235-259, 346-357): SGD lr 0.01, momentum 0.9, weight
        # decay 5e-4, batches of 256 real images without augmentation, 10 steps per training.
        # IDM keeps up to 100 networks, adds a fresh one every 30 iterations and trains 2 random
        # ones per iteration, so a network lives 3000 iterations and ~600 steps; here FRePo's
        # pool stands for the queue: 10 networks, the one drawn trains its 10 steps after its
        # update (10 epochs of one batch of 256 random real images: IDM's draw per step) and
        # is re-initialised after 60 such trainings (600 steps), ages staggered. IDM's IPC 1
        # command differs: a network every 5 iterations (ages 0 to ~100 steps, i.e.
        # match.net_max_updates=10) and the whole class as real batch; the preset keeps IPC 10's
        # schedule and 256 real images a class at every IPC (sets_fashion_mnist_findings.md).
        config.match.family = "distribution"
        config.syn.param, config.syn.factor, config.syn.init = "factorized", 2, "mix"
        config.syn.lr = 0.2
        config.match.syn_ce = 0.5
        config.match.net_pool, config.match.net_max_updates = 10, 60
        config.match.net_train, config.match.net_augment = "real", "none"
        config.match.outer_loop, config.match.inner_loop = 1, 10
        config.match.net_data, config.match.inner_batch, config.match.net_cutmix = 256, 256, 0.0
        config.match.net_momentum, config.match.net_weight_decay = 0.9, 5e-4
        config.num_iterations = 20000  # IDM's default Iteration.
        config.checkpoint.every = 500
        config.log.every = 100
    return config


def without_flips(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Drops 'flip' from the matching and evaluation augmentation (digits are not symmetric)."""
    for section in (config.match, config.eval):
        section.augment = augment.without(section.augment, "flip")
    return config
