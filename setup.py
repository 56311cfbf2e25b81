"""Installs the ``unimmad`` (reference model) and ``kernels`` (fast paths) packages."""
from setuptools import find_packages, setup

setup(
    name="unimmad",
    version="0.1.0",
    description="UniMMAD anomaly detection: reference PyTorch model and fused C-MoE / "
                "anomaly-map kernels (Triton + torch fast paths)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["unimmad", "unimmad.*", "kernels", "kernels.*"]),
    install_requires=[
        "torch>=2.4",
        "triton>=3.6; platform_system == 'Linux'",
        "numpy",
        "fvcore",
        "safetensors",
        "tqdm",
        "pyyaml",
        "pillow",
        "scipy",
        "tifffile",
        "nibabel",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "scikit-learn"],
        "mulsen": ["trimesh"],  # MulSen-AD point clouds rendered to depth
    },
    entry_points={"console_scripts": ["unimmad=unimmad.cli:main"]},
    license="MIT",
)
