"""The names of the choices the package accepts, in one place that imports nothing heavy: the command line checks
a whole config against them before it imports torch."""

LOSS_VARIANTS = ("rel", "abs")                          # SL_rel (TDANN) and SL_abs (Lee et al. 2020), DESIGN §3
TIME_REDUCTIONS = ("mean", "flatten", "dual")           # how 5-D activations become unit responses
LOSS_BACKENDS = ("auto", "torch", "triton")             # spatial-loss implementations
SWAP_OBJECTIVES = ("tdann", "exact")                    # position-swap objectives, DESIGN §5
SWAP_BACKENDS = ("auto", "reference", "cpp", "cuda")    # position-swap implementations
