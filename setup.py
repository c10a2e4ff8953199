"""pina-tff: differentially private clustered federated learning on TFF.

Dependencies are governed by requirements/lock.txt (installed with --no-deps by
`make install`), so install_requires stays empty on purpose: pip's resolver
cannot satisfy tensorflow-federated 0.87.0's pins (its jaxlib==0.4.14 is not on
the package index).
"""
from setuptools import find_packages, setup

setup(
    name="pina-tff",
    version="0.1.0",
    description="Differentially private clustered federated learning (PINA) on TensorFlow Federated",
    packages=find_packages(include=["pina_tff", "pina_tff.*", "computations", "computations.*",
                                    "pipelines", "pipelines.*", "benchmarks", "benchmarks.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=[],
    # Each script calls pipelines.startup.prepare() (quiet start-up) before it imports
    # its entry module (pipelines/entry.py).
    entry_points={
        "console_scripts": [
            "pina-prepare=pipelines.entry:prepare",
            "pina-pretrain=pipelines.entry:pretrain",
            "pina-embed=pipelines.entry:embed",
            "pina-simulate=pipelines.entry:simulate",
            "pina-grid=pipelines.entry:grid",
            "pina-bench=pipelines.entry:bench",
        ],
    },
)
