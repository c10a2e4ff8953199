"""pina-tff: differentially private clustered federated learning (PINA) on TensorFlow.

Everything under `pina_tff` is plain TensorFlow / NumPy / SciPy and never imports
`tensorflow_federated`; the TFF computations live in the top-level `computations`
package.
"""

__version__ = "0.1.0"
