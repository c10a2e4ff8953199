"""Named random streams: every salt that separates one use of a seed from another.

Stateless TF seeds are ``client_seed + [0, salt]`` (`pina_tff.training.local`); NumPy
streams are ``default_rng([seed, stream])``. Changing a value here changes every
result that uses it (and resumed runs would no longer match uninterrupted ones).
"""

#: TF salt of epoch e's minibatch shuffle of a client: EPOCH_SHUFFLE + e.
EPOCH_SHUFFLE = 1000
#: TF salt of a client's local-DP noise on its C-slot update (IFCA+LDP).
LDP_NOISE = 7
#: TF salt of a client's local-DP noise on its stage-1 sketch.
SKETCH_NOISE = 11
#: NumPy stream of the random LoRA init of the clusters (PINA+RI, IFCA, IFCA+LDP).
RANDOM_INIT = 1
#: NumPy stream of the public-split permutation of a prepared data set.
PUBLIC_SPLIT = 1
#: Client seeds of a round in simulation mode:
#: (seed · CLIENT_SEED_RUN + stage · CLIENT_SEED_STAGE + round) mod (2^31 - 1).
CLIENT_SEED_RUN = 1_000_003
CLIENT_SEED_STAGE = 7_919
#: Last word of the SeedSequence entropy of a round's central-DP noise seed.
CENTRAL_NOISE = 0xD15C
