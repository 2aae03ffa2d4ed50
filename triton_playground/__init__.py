"""triton_playground: Triton kernels for GPT-2, OPT, Persimmon and OLMoE, each beside its PyTorch reference.

Four parts, one subpackage each:

    from triton_playground import kernels, models
    kernels.attention(q, k, v, window=256)        # the ops (kernels/ops/<op>/), kernels.count() and the report
    models.from_pretrained("path/to/gpt2")        # model files that compose them (models/)

``triton_playground.sweeps`` and ``triton_playground.plots`` measure and draw them; ``triton-playground`` (or
``python -m triton_playground``) is the command line over all of it (``cli.py``). The package is named after the
project because ``kernels``, ``models`` and ``sweeps`` are other PyPI packages' import names (transformers 5
installs Hugging Face's ``kernels``). Nothing is imported here: ``kernels`` picks the backend when it loads.
"""
