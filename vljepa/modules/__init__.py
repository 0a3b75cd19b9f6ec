"""The networks a model is made of: the frozen encoders, the predictors, the ternary layers and
the text decoders. Each file reads on its own; :mod:`vljepa.model` and :mod:`vljepa.baseline`
assemble them."""
