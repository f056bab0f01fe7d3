"""The fixture formula of ../shared/fixtures/FORMULA.md in NumPy, for the scripts that make test
fixtures with real tools (lpips_reference.py, timm_vgg.py)."""
import numpy as np

M64 = (1 << 64) - 1


def fnv1a64(name):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def s(name, n):
    """s(name, i) for i < n, vectorised (uint64 arithmetic wraps as the formula says)."""
    with np.errstate(over="ignore"):
        x = np.uint64(fnv1a64(name)) + np.arange(n, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return 2 * ((z >> np.uint64(11)).astype(np.float64) * 2.0**-53) - 1


def formula(key, shape):
    """A conv or linear parameter of torchvision's key `key` (weights and biases only)."""
    n = int(np.prod(shape))
    if key.endswith("weight"):
        fan_in = n // shape[0]
        return (np.sqrt(6 / fan_in) * s(key, n)).reshape(shape)
    return (0.05 * s(key, n)).reshape(shape)


def formula_input(tag, shape):
    """The input called `tag`: s("input:" + tag, i)."""
    return s("input:" + tag, int(np.prod(shape))).reshape(shape)
