"""covidxray: train, evaluate and explain chest X-ray classifiers (COVID-19, pneumonia).

For research and teaching only, never for diagnosis.
"""

from covidxray.backend import choose_backend

choose_backend()  # must run before anything imports keras

__version__ = "0.1.0"
