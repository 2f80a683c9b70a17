"""Shared defaults of every vreid_jax config.

Experiment configs start from `get_config()` here and override fields. Every
field exists here, so the config is locked and a typo on the command line
(`--config.inptu.clip_len=8`) fails with a message.
"""

import ml_collections


def reid_eval(**overrides) -> ml_collections.ConfigDict:
  """A re-id evaluator (`vreid_jax.evaluators.reid`) with its defaults."""
  c = ml_collections.ConfigDict(dict(
      type="reid",
      every_steps=0,            # 0 = only at the end of training.
      # The dataset to evaluate on; name '' = the training dataset. Another
      # name is cross-dataset evaluation with that dataset's own protocol.
      dataset=dict(name="", config="", trial=-1, auto_build=False),
      mode="dense",             # all | dense | every_frame | evenly
      clip_len=8,
      batch_size=32,            # clips per global eval batch
      max_frames_per_device=1024,  # frames one device embeds per call
      protocol="given",         # given | standard | with_queries | matlab
      metric="euclidean",       # euclidean | sqeuclidean | cosine
      normalize=False,
      ap="step",                # step | trapezoid
      max_rank=20,
      rerank=False,             # also report k-reciprocal re-ranking
      save_features=False,      # write query/gallery_features.npz
      plots=True,               # cmc.png, ranked_list_<i>.png in the workdir
      plot_queries=4,           # queries drawn as ranked lists
      plot_top_k=8,
  ))
  c.update(overrides)
  return c


def motion_twins_eval(source: str = "reid") -> ml_collections.ConfigDict:
  """The synthetic benchmark's motion-twin metrics over evaluator `source`."""
  return ml_collections.ConfigDict(dict(
      type="motion_twins", source=source, every_steps=0))


def attention_occlusion_eval(source: str = "reid"
                             ) -> ml_collections.ConfigDict:
  """Attention weight of occluded vs clean frames (synthetic benchmark)."""
  return ml_collections.ConfigDict(dict(
      type="attention_occlusion", source=source, every_steps=0))


def stn_boxes_eval(source: str = "reid", *, num_tracklets: int = 4,
                   max_frames: int = 8) -> ml_collections.ConfigDict:
  """The boxes a spatial transformer samples, drawn on test frames."""
  return ml_collections.ConfigDict(dict(
      type="stn_boxes", source=source, every_steps=0,
      num_tracklets=num_tracklets, max_frames=max_frames))


def star_attention_eval(source: str = "reid", *, num_tracklets: int = 4,
                        max_frames: int = 8) -> ml_collections.ConfigDict:
  """Spatial and temporal attention of a few query clips, drawn (STAR)."""
  return ml_collections.ConfigDict(dict(
      type="star_attention", source=source, every_steps=0,
      num_tracklets=num_tracklets, max_frames=max_frames))


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Durations: num_steps if > 0, else num_epochs epochs of PK batches.
  c.num_steps = -1
  c.num_epochs = 1.0
  c.log_every_steps = 50
  # Persistent XLA compilation cache ('' = off); cuts repeated compiles.
  c.jax_cache_dir = ""
  # The TFDS data dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets).
  c.data_dir = ""

  # The model: vreid_jax.models.<model_name>.Model(num_classes=..., **model).
  # frame_dim is d, the per-frame feature size after the reduction layer
  # (0 = the backbone's pooled feature).
  c.model_name = "baseline"
  c.model = ml_collections.ConfigDict(dict(
      arch="resnet50", width=64, last_stride=1, frame_dim=0,
      neck_feat="after", dtype="float32",
      remat=False,                  # recompute backbone activations
      norm_impl="fused"))           # BatchNorm: fused (faster) | flax

  # The dataset: a TFDS builder of vreid_jax.datasets.
  c.dataset = ml_collections.ConfigDict(dict(
      name="mars",
      config="",          # TFDS builder config, '' for the default.
      trial=-1,           # iLIDS-VID / PRID-2011 / SDU-VID: trial 0..9.
      auto_build=False,   # Build procedurally generated datasets if missing.
  ))

  # Training input: PK batches of clips.
  c.input = ml_collections.ConfigDict(dict(
      height=256, width=128,
      clip_len=8,
      clip_sampling="consecutive",  # consecutive | evenly | restricted
      num_ids_per_batch=8,          # P
      num_per_id=4,                 # K
      epoch_repeats=1,              # PK passes over the tracklets per epoch
      pk_epoch="tracklets",         # tracklets | ids (each identity once)
      flip_prob=0.5, pad=10, erasing_prob=0.5,
      translate_prob=0.0,           # Random2DTranslation (1.125x + crop)
      augment_per_frame=False,      # independent draws per frame
      shuffle_frames=False,         # control: frames of a clip in random order
      pair_motion_twins=False,      # synthetic: twins share training batches
      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
      with_flow=False,              # also serve "flow" (data_prep/flow.py)
      flow_scale=0.05,              # flow pixels x this (+-20 px -> +-1)
      num_workers=0,                # grain worker processes (0 = threads)
      num_threads=2,
      device_prefetch=2,            # batches placed on the devices ahead
      # A frame that fails to decode: "error" stops, naming dataset, split,
      # record, tracklet and frame; "skip" replaces it by the nearest
      # readable frame of its tracklet and counts it (logs, metrics.json).
      on_bad_frame="error",         # error | skip
  ))

  # Named loss instances (vreid_jax/losses.py): type defaults to the name;
  # `inputs` maps a loss argument to an aux key of the model.
  c.losses = ml_collections.ConfigDict({
      "softmax_cross_entropy": {"weight": 1.0, "label_smoothing": 0.1},
      "batch_hard_triplet": {"weight": 1.0, "margin": 0.3},
  })
  # param_groups: {name: {pattern: regex over "backbone/conv1/kernel"-style
  # paths, lr_mult: float (0 = frozen), weight_decay: optional}}.
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", weight_decay=5e-4, grad_clip_norm=0.0,
      param_groups=ml_collections.ConfigDict()))
  c.schedule = ml_collections.ConfigDict(dict(
      name="step", base_lr=3.5e-4, warmup_epochs=10.0,
      decay_epochs=(40.0, 70.0), decay_factor=0.1))

  # Named evaluators (vreid_jax/evaluators/); main_eval's results are the
  # run's headline metrics (top level of metrics.json).
  c.evals = ml_collections.ConfigDict({"reid": reid_eval()})
  c.main_eval = "reid"

  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3))
  c.init_from = ml_collections.ConfigDict(dict(
      checkpoint="",            # a stage-1 workdir / checkpoint dir
      backbone_weights="",      # pretrained weights, read by the model's load
  ))
  c.distributed = ml_collections.ConfigDict(dict(
      initialize=False, coordinator_address="", num_processes=-1,
      process_id=-1))
  return c
