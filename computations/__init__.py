"""TFF computations of pina-tff: the only package that imports tensorflow_federated."""
