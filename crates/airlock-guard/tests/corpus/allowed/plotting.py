# Plots: a figure is saved to the workspace and also returned as a rich result.
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

xs = np.linspace(0, 10, 200)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
ax1.plot(xs, np.sin(xs), label="sin")
ax1.plot(xs, np.cos(xs), label="cos")
ax1.legend()
ax1.xaxis.set_major_locator(ticker.MultipleLocator(2))
ax2.hist(np.random.default_rng(0).normal(size=1000), bins=30)
ax2.set_title(f"matplotlib {matplotlib.__version__}")
fig.tight_layout()
fig.savefig("plot.png")
fig
