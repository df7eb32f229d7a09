"""hedgespec-fast: online drafter selection for speculative decoding of HuggingFace models."""
from setuptools import setup

setup(
    name="hedgespec-fast",
    version="0.1.0",
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
        "torch>=2.4",
        "transformers>=4.56",
        "numpy",
        "tqdm",
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        "dev": [
            "triton>=3.0",
            "pytest>=8",
            "pytest-benchmark>=4",
            "scipy",
            "matplotlib",
            "tokenizers>=0.19",
        ],
        "zoo": ["tokenizers>=0.19", "matplotlib"],
        "flash-attn": ["flash-attn>=2.5"],
    },
    entry_points={"console_scripts": ["hedgespec=hedgespec_fast.cli:main"]},
)
