"""hedgespec-fast: online drafter selection for speculative decoding of HuggingFace models."""
from setuptools import setup

setup(
    name="hedgespec-fast",
    version="0.2.0",
    description="Lossless multi-drafter speculative decoding with full-information (HedgeSpec) drafter selection",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The top-level kernels/ folder ships as hedgespec_fast.kernels: never install a top-level `kernels`
    # module, transformers probes for a different package of that name.
    packages=[
        "hedgespec_fast",
        "hedgespec_fast.drafters",
        "hedgespec_fast.learners",
        "hedgespec_fast.zoo",
        "hedgespec_fast.kernels",
    ],
    package_dir={"hedgespec_fast.kernels": "kernels"},
    package_data={"hedgespec_fast.zoo": ["weights/*", "weights/**/*", "data/*", "data/**/*"]},
    install_requires=[
        "torch>=2.4,<3",
        # Tested in CI at both ends: 4.57 (the first with callable custom_generate) and 5.24 (the newest).
        # Raise the bound after the next minor passes CI: transformers renames and removes generation APIs in minors.
        "transformers>=4.57,<5.25",
        "numpy",
        "tqdm",
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        "models": ["gguf>=0.10", "accelerate>=1.0"],  # hedgespec models fetch: GGUF → safetensors
        "dev": [
            "triton>=3.0",
            "pytest>=8",
            "pytest-benchmark>=4",
            "hypothesis>=6",
            "scipy",
            "matplotlib",
            "tokenizers>=0.19",
            "gguf>=0.10",
            "accelerate>=1.0",
            "scikit-learn",  # transformers' adaptive assistant threshold: the head-to-head test runs HF's schedule
        ],
        "bench": ["matplotlib", "scikit-learn"],  # scikit-learn: transformers' adaptive assistant threshold
        "zoo": ["tokenizers>=0.19", "matplotlib"],
        "flash-attn": ["flash-attn>=2.5"],
    },
    entry_points={"console_scripts": ["hedgespec=hedgespec_fast.cli:main"]},
)
