# Linear algebra, random numbers, FFT and polynomial fits.
import numpy as np
import numpy.linalg as la
from numpy.random import default_rng

rng = default_rng(42)
a = rng.normal(size=(4, 4)) + 4 * np.eye(4)
b = rng.normal(size=4)
x = la.solve(a, b)
assert np.allclose(a @ x, b)
signal = np.sin(np.linspace(0, 8 * np.pi, 256))
spectrum = np.abs(np.fft.rfft(signal))
coeffs = np.polyfit(np.arange(10), np.arange(10) ** 2, 2)
masked = np.ma.masked_less(np.arange(6), 2)
np.save("x.npy", x)
print(int(spectrum.argmax()), np.round(coeffs, 3).tolist(), masked.sum(), np.load("x.npy").shape)
