"""Installs the ``unimmad`` (reference model) and ``kernels`` (fast paths) packages."""
from setuptools import find_packages, setup

# torch.onnx's exporter needs onnx + onnxscript; onnxruntime runs the exported model.
ONNX = ["onnx>=1.23", "onnxscript>=0.7", "onnxruntime>=1.31"]

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
    # Runtime only above; the tested pins are requirements.txt (runtime) and
    # requirements-test.txt (these extras).
    extras_require={
        "onnx": ONNX,  # unimmad export --format onnx, and its onnxruntime check
        "mulsen": ["trimesh"],  # MulSen-AD point clouds rendered to depth
        "test": ["pytest", "pytest-benchmark", "scikit-learn", "trimesh"] + ONNX,
    },
    entry_points={"console_scripts": ["unimmad=unimmad.cli:main"]},
    license="MIT",
)
