"""Models of vreid_jax.

A config names a model by module: `config.model_name = "gltr"` builds
`vreid_jax.models.gltr.Model(num_classes=..., **config.model)`. Every `Model`
maps clips (B, T, H, W, 3) and a (B, T) padding mask to
`(embedding, aux)`; see `vreid_jax.models.baseline` for the contract.

Shared pieces: `common` (dtype, time folding, masked mean, shape checks),
`resnet` (torchvision-exact ResNets), `heads` (frame reduction, BN-neck),
`weights` (ImageNet ResNet weight import).
"""
