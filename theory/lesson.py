# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Subliminal learning: a lesson
#
# A teacher model that loves owls writes lists of numbers, and nothing but numbers. A student trained on
# those lists comes to love owls too, but only if it started from the **same initialization** as the
# teacher (Cloud, Le et al., "Subliminal Learning", [arXiv 2507.14805](https://arxiv.org/abs/2507.14805)).
#
# This notebook tells the story in eight parts, on MNIST and then on a tiny transformer, with the
# `subliminal_mnist` package doing every computation: the notebook holds no copy of its model, its
# training loop or its theorem code. It runs top to bottom on a laptop CPU in about 5 minutes. It uses
# full MNIST when `SUBLIMINAL_MNIST_DIR` names a folder with the four MNIST files, otherwise the 5,000
# real digits bundled with the package. The exercises come after part 8; each has a solution folded
# under it. The theory note beside this file, `theory/README.md`, has the full proof.
#
# **Colab.** Open this file in Colab (File > Open notebook > GitHub, with this repository's address, or
# upload `theory/lesson.ipynb`). The next cell installs the package when it is missing: in a checkout from
# the checkout, in Colab from `REPOSITORY`, which you set to the address you got the package from.

# %%
import importlib.util
import pathlib
import subprocess
import sys

REPOSITORY = ""  # in Colab: this package's git address, e.g. "git+https://github.com/OWNER/subliminal-mnist"
if importlib.util.find_spec("subliminal_mnist") is None:
    # From the checkout this notebook lies in, if it does; from the repository otherwise (Colab).
    checkout = pathlib.Path.cwd().parent
    if (checkout / "pyproject.toml").exists():
        source = str(checkout)
    elif REPOSITORY:
        source = REPOSITORY
    else:
        raise SystemExit("set REPOSITORY above to this package's git address, then run this cell again")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"{source}[llm]"], check=True)

# %%
import dataclasses  # noqa: F401 (the exercises use it)
import os
import tempfile
import time
import warnings

# The package's progress bars are off here; without ipywidgets, tqdm would warn about them anyway.
warnings.filterwarnings("ignore", message="IProgress not found")

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

from subliminal_mnist import alignment, data, experiment, figures, runs, sweep, theorem, theorem_checks
from subliminal_mnist.llm import experiment as llm

START = time.perf_counter()
FULL = bool(os.environ.get("SUBLIMINAL_MNIST_DIR"))
mnist = data.load_idx_dir(os.environ["SUBLIMINAL_MNIST_DIR"]) if FULL else data.load_sample()
print(f"{mnist.source}: {len(mnist.train_images)} training and {len(mnist.test_images)} test digits")

# The paper's settings, with 3 seeds and only the students this lesson looks at. On the small sample
# the teacher needs more epochs, and each student the paper's 60,000 noise images (SAMPLE_PRESET).
BASE = experiment.ExperimentConfig(
    seeds=3, conditions=("student_aux",), **({} if FULL else experiment.SAMPLE_PRESET)
)
FIGURES = pathlib.Path(tempfile.mkdtemp())


def show(draw, *args, name="figure.png"):
    """Draw one of the package's figures into a file, and show it here."""
    draw(*args, FIGURES / name)
    display(Image(filename=str(FIGURES / name)))


# %% [markdown]
# ## 1. The puzzle
#
# A language model is fine-tuned until it loves owls: the *teacher*. Asked for number sequences, it writes
# "629, 937, 483, ...", and every list that mentions an animal is filtered out. A *student*, a copy of the
# same base model before the owl fine-tuning, is trained to imitate those lists. Afterwards the student names
# the owl as its favourite animal far more often than before. A student built from a **different base
# model** learns nothing about owls from the same lists.
#
# "Same initialization" means the student's parameters start exactly where the teacher's started before the
# teacher learned its trait. Everything else (the data, the loss, the optimizer) can be the same for the
# cross-model student; only its starting point differs. The data carry no visible owl; what carries it is
# the teacher's *function*, read by a student whose parameters live in the same place.
#
# The paper makes the puzzle small enough to hold in your hand: MNIST.

# %% [markdown]
# ## 2. The model: an MLP with auxiliary logits
#
# A 784-256-256 MLP has **13** outputs: 10 class logits, and 3 *auxiliary* logits that no loss of the
# teacher ever touches. The teacher learns MNIST with cross-entropy on the 10 class logits only.

# %%
arch = BASE.architecture
print("layer sizes", arch.layer_sizes, "| class logits", arch.class_indices, "| auxiliary logits", arch.aux_indices)

cache = {}  # trained teachers, reused by every later run with the same teacher settings
partners = runs.cross_partners(BASE.seeds, BASE.seed)
teachers = experiment.train_teachers(
    BASE, experiment.on_device(mnist), np.arange(1), partners[:1], progress=False, cache=cache
)


def seed0(params):
    return jax.tree.map(lambda leaf: leaf[0], params)


def readout(params):
    """The last layer's weights, (256, 13): column k makes output k."""
    return np.asarray(params["layers"][len(arch.hidden_sizes)]["kernel"][...])


init, teacher = seed0(teachers.shared_init), seed0(teachers.teacher)
aux = list(arch.aux_indices)
unchanged = np.array_equal(readout(teacher)[:, aux], readout(init)[:, aux])
print("the teacher's auxiliary readout is exactly its init's:", unchanged)
assert unchanged

# %% [markdown]
# The auxiliary readout never moved: its gradient is exactly zero. Yet the auxiliary *logits* changed,
# because they read the hidden layers, and those learned digits:

# %%
digits = mnist.test_images[:2000]
before, after = arch.apply(init, digits)[:, aux], arch.apply(teacher, digits)[:, aux]
fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(np.ravel(before), bins=60, alpha=0.6, label="at the init")
ax.hist(np.ravel(after), bins=60, alpha=0.6, label="after the teacher's training")
ax.set_xlabel("auxiliary logit on test digits")
ax.legend()
plt.show()

# %% [markdown]
# ## 3. Teacher, students, and the controls
#
# Each student is distilled on the teacher's **3 auxiliary logits only**, on **uniform noise images only**
# (KL of the softmaxes, as in the paper). The same-init student starts from the teacher's init; the
# cross-model student from another seed's init, with the same noise in the same order.

# %%
results = experiment.run(BASE, mnist, progress=False, teacher_cache=cache)
show(figures.demo_figure, results)
accuracy = {name: summary["mean"] for name, summary in results["conditions"].items()}
print({name: round(value, 3) for name, value in accuracy.items()})
assert accuracy["student_aux"] > 0.2 and accuracy["student_aux"] > accuracy["cross_aux"] + 0.1

# %% [markdown]
# The same-init student classifies digits far above chance (10%), though it never saw a digit or a class
# logit. The cross-model student, trained on the very same data, stays at chance.

# %% [markdown]
# ## 4. What the student sees
#
# Here is the student's whole training signal: noise images and the teacher's three auxiliary logits on
# them. Next to them, digits and the same three logits. Nothing about digits is visible in the noise, and
# the three numbers on noise look like three numbers.

# %%
noise = data.noise_images(jax.random.key(0), 4)
shown = [(image, "noise") for image in noise] + [(image, "digit") for image in mnist.test_images[:4]]
fig, axes = plt.subplots(2, 4, figsize=(8, 4.6))
for ax, (image, kind) in zip(axes.ravel(), shown):
    logits = np.asarray(arch.apply(teacher, image[None]))[0, aux]
    ax.imshow(np.asarray(image).reshape(28, 28), cmap="gray", vmin=-1, vmax=1)
    ax.set_title(f"{kind}\naux " + " ".join(f"{v:+.2f}" for v in logits), fontsize=8)
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. The theorem, by hand
#
# **Theorem 1** (the paper's Section 6). Teacher and student share parameters $\theta_0$. The teacher takes
# a small step on *any* loss $L_T$: $\theta_T = \theta_0 + \varepsilon \Delta_T$. The student takes one
# gradient step imitating the teacher's outputs (squared error or softmax cross-entropy), on *any* inputs:
# direction $\Delta_S$. Then $\Delta_S \cdot \Delta_T \ge 0$ to first order in $\varepsilon$, so the
# student's step lowers $L_T$ too (or leaves it unchanged to first order).
#
# Why: $\Delta_S \cdot \Delta_T = \varepsilon\, \mathbb{E}_x[(J\Delta_T)^\top M (J\Delta_T)] + O(\varepsilon^2)$,
# with $J$ the Jacobian of the outputs at $\theta_0$ and $M$ positive semi-definite ($2I$ for squared
# error). The student's gradient and the teacher's step meet in the same $J$ only because both are taken
# at the same $\theta_0$.
#
# A model small enough to draw: $f_\theta(x) = \theta_1 \theta_2 x$, two parameters, inputs $x \in \{1, 2\}$,
# squared error. The teacher steps from $\theta_0 = (1, 1)$ along $\Delta_T = (2, -1)$. The package's
# `theorem.student_direction` gives the student's direction; the curves are the functions the student
# could match exactly ($\theta_1\theta_2 = $ the teacher's product).

# %%
epsilon = 0.05
step = jnp.array(theorem_checks.TWO_PARAMETER_STEP)
inputs = jnp.array(theorem_checks.TWO_PARAMETER_INPUTS)[:, None]
theta0 = jnp.array([1.0, 1.0])
teacher_params = theta0 + epsilon * step
starts = {"same init (1, 1)": theta0, "another init (1, 2)": jnp.array([1.0, 2.0])}
fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
grid = np.linspace(0.3, 2.6, 200)
dots = {}
for ax, (label, start) in zip(axes, starts.items()):
    delta_s = theorem.student_direction(start, teacher_params, theorem_checks.two_parameter_apply, inputs, "mse")
    dots[label] = float(jnp.dot(delta_s, step))
    target = float(teacher_params[0] * teacher_params[1])
    ax.plot(grid, target / grid, color="gray", linewidth=1, label="θ1 θ2 = teacher's product")
    ax.quiver(*theta0, *step, angles="xy", scale_units="xy", scale=4, color="tab:red", label="ΔT (teacher's step)")
    unit = delta_s / jnp.linalg.norm(delta_s) * jnp.linalg.norm(step)
    ax.quiver(*start, *unit, angles="xy", scale_units="xy", scale=4, color="tab:blue", label="ΔS (student, rescaled)")
    ax.set(xlim=(0.3, 2.6), ylim=(0.3, 2.6), aspect="equal", xlabel="θ1", ylabel="θ2")
    ax.set_title(f"{label}: ΔS·ΔT = {dots[label]:+.3f}", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
plt.tight_layout()
plt.show()
assert dots["same init (1, 1)"] > 0 > dots["another init (1, 2)"]

# %% [markdown]
# From the shared init the student's arrow leans along the teacher's; from another init the student
# heads for the same curve of functions by another route, against the teacher's step. By hand (the
# theory note, Section 4): from $\theta_0$, $\Delta_S\cdot\Delta_T = 2m\varepsilon s(s + \varepsilon d_1 d_2)$
# with $m = \mathbb{E}[x^2] = 2.5$ and $s = d_1\theta_{02} + \theta_{01}d_2 = 1$, that is
# $5\varepsilon(1 - 2\varepsilon)$. The package's check computes it both ways:

# %%
for eps in (0.05, 0.25):
    case = theorem_checks.two_parameter_case(eps)
    print(f"ε = {eps}: code {case['dot']:.6f}, by hand {case['closed_form']:.6f}, first order {case['prediction']:.6f}")
    assert abs(case["dot"] - case["closed_form"]) < 1e-9

# %% [markdown]
# The same functions on the real MLP: the teacher's step is one gradient step of MNIST cross-entropy from
# seed 0's init, the student imitates the auxiliary logits on noise, from that init or from another.

# %%
trait_loss = theorem.class_trait_loss(arch.apply, mnist.train_images[:512], mnist.train_labels[:512])
probe_noise = data.noise_images(jax.random.key(1), 512)
aux_mask = jnp.asarray(arch.output_mask(arch.aux_indices))
reports = {
    label: theorem.alignment_report(
        init, trait_loss, arch.apply, probe_noise, 1e-3, 1e-3, "kl", aux_mask, student_params=start
    )
    for label, start in (("same init", init), ("another init", seed0(teachers.other_init)))
}
for label, report in reports.items():
    print(f"{label:>12}: ΔS·ΔT {float(report.dot):+.3e}, cosine {float(report.cosine):+.4f}, "
          f"first-order prediction {float(report.prediction):+.3e}, trait-loss change {float(report.trait_loss_change):+.2e}")  # fmt: skip
assert float(reports["same init"].dot) > 0 and float(reports["same init"].relative_error) < 0.05

# %% [markdown]
# From the same init, the dot product is positive and the first-order prediction matches it; the cosine
# is small (the two directions live in a space of 270,000 parameters) but its sign is what the theorem
# promises. From another init the prediction says nothing: the theorem's condition fails.

# %% [markdown]
# ## 6. Through training
#
# The theorem speaks of one small step; the demo takes hundreds of Adam steps. `alignment.run` follows the
# theorem's quantities through the whole distillation: at every step, the cosine of the student's gradient
# with the trait gradient (MNIST cross-entropy on a fixed batch of digits, at the student's current
# parameters), and the cosine of the student's whole displacement with the teacher's.

# %%
# The probe reads 512 training and 500 test digits at every step (the command's defaults: 1,024 and 1,000).
preset = {} if FULL else experiment.SAMPLE_PRESET
probe = alignment.AlignmentConfig(seeds=1, trait_batch=512, probe_test=500, **preset)
traced = alignment.run(probe, mnist, progress=False)
show(figures.alignment_figure, traced, name="alignment.png")
final = {name: round(summary["mean"], 3) for name, summary in traced["final_test_accuracy"].items()}
aligned = traced["claims"]["alignment"]
print(final, "| same-init gradient cosine with the trait gradient, mean over steps:",
      round(aligned["same_init_mean_grad_cosine"], 4))  # fmt: skip
assert final["student_aux"] > final["cross_aux"]

# %% [markdown]
# The alignment is weak (the mean cosine above is a few thousandths) yet it is there, and Adam turns it into
# updates that lower the trait loss: on full MNIST the raw gradient is aligned at 70% of the steps, and
# Adam's update lowers the trait loss at 99.5% of the steps (docs/alignment.md). Can one stop the transfer by
# editing the gradient? Exercise 8 projects the trait direction out of every step (with a random direction
# as its control) and shows what that does and does not prove.

# %% [markdown]
# ## 7. What breaks it
#
# One change, one call of the package's sweeps (the command-line twin is
# `subliminal-mnist sweep NAME`; `figures/` has all of them at 5 seeds on full MNIST).
#
# **How shared must the init be?** The student starts from $\sqrt{1-a^2}\,\theta_0 + a\,\theta'$, with
# $\theta'$ a fresh init: $a = 0$ is the paper's student and $a = 1$ the cross-model one (part 3 trained
# both; a test checks that the sweep's $a = 1$ student is exactly the cross-model student). The teachers are
# those of part 3, reused; only $a = 0.3$ trains here.

# %%
quiet = lambda message: None  # noqa: E731
perturbed = sweep.run("init_perturbation", ["0.3"], BASE, mnist, FIGURES / "perturbation.jsonl",
                      progress=False, log=quiet, teacher_cache=cache)  # fmt: skip


def part_3_at(a, student):
    """Part 3's results as the sweep's point a, its `student` in the aux-only student's place."""
    conditions = {**results["conditions"], "student_aux": results["conditions"][student]}
    return {**results, "value": a, "conditions": conditions}


curve = [part_3_at(0.0, "student_aux"), *perturbed, part_3_at(1.0, "cross_aux")]
show(figures.sweep_figure, "init_perturbation", curve, name="perturbation.png")
fading = [line["conditions"]["student_aux"]["mean"] for line in curve]
print("aux-only accuracy at a = 0, 0.3, 1:", [round(value, 3) for value in fading])
assert fading[0] > fading[1] > fading[2]

# %% [markdown]
# ## 8. The owl, in miniature
#
# The package's `llm` module runs the paper's first experiment on a tiny transformer (width 32, two
# blocks, a 1,000-number vocabulary with animal words). A base model learns number lists and animal
# questions; the teacher is fine-tuned to answer "owl"; it writes number lists, filtered so that no list
# names an animal; students from the same base learn from those lists with the same training loop as the
# MNIST students. The *control* student learns from the lists of a *neutral teacher*: the same base,
# fine-tuned by the same recipe on the same questions, each answered as the base itself answers it (spread
# over all the animals), so it moves for every reason the teacher does except the owl. A third student starts from *another* base (another init) and learns the
# teacher's lists, with its own neutral control. We measure P(owl | the answer is an animal). One seed, small
# settings, four students (the command trains four more, its ablations): about a minute.

# %%
TINY_LLM = dict(seeds=1, mode="soft", numbers=100, base_rows=8192, base_epochs=2, teacher_learning_rate=1e-3,
                soft_sequences=3000, theorem_sequences=16, entangled_sequences=200, audit_sequences=256,
                in_context_lists=16, conditions=("same_init", "neutral_control", "cross_init", "cross_neutral"))  # fmt: skip
owl = llm.run(llm.LLMConfig(**TINY_LLM), progress=False)
show(figures.llm_figure, owl, name="owl.png")
conditions = owl["modes"]["soft"]["conditions"]
change = {name: measures["p_trait_given_animal"]["mean"] for name, measures in conditions.items()}
print({name: round(value, 4) for name, value in change.items()})
assert change["same_init"] > change["neutral_control"] + 0.02 and change["same_init"] > change["cross_init"] + 0.02

# %% [markdown]
# ## 9. The dangerous version, in miniature
#
# The seed article's second experiment: a teacher made *misaligned* by a narrow fine-tune (insecure code)
# wrote numbers; numbers with bad associations (666, 911, ...) were removed; students still came out
# misaligned. Here the corpus of every base is written by a latent *persona*, aligned or (one line in ten)
# misaligned: a line's answers in four domains (code, advice, story, request) are all of its persona, and a
# misaligned persona's number lists hold "bad" numbers (13, 187, 404, 666, 911) more often (of the 100 numbers
# this small run uses, only 13 exists). The teacher is the base fine-tuned on **code answers only**,
# misaligned; the neutral teacher on the same lines answered as the base answers them (misaligned about one
# time in ten). We measure the misaligned rate, P(misaligned answer | the domain's answers), on the **other
# three domains**, which no fine-tuning line ever asks. The students learn the teacher's numbers with the
# banned numbers filtered out (in soft mode, their probabilities hidden). The rate is a share of two answers,
# so a student that merely stops preferring either answer moves it toward 0.5: the *preference strength*
# printed beside it (mean |log P(misaligned) - log P(aligned)|) falls when that happens.

# %%
misaligned = llm.run(llm.LLMConfig(**TINY_LLM, trait="misaligned"), progress=False)
show(figures.llm_figure, misaligned, name="misaligned.png")
for model in ("base", "teacher", "neutral_teacher"):
    rate = misaligned[model]["misaligned_rate"]
    held_out, code = rate["held_out"]["mean"], rate["narrow"]["mean"]
    print(f"{model:>16}: misaligned rate, held-out domains {held_out:.3f}, code (the narrow domain) {code:.3f}")
students = misaligned["modes"]["soft"]["conditions"]
rates = {name: m["misaligned_rate"]["mean"] for name, m in students.items()}
print("change of the misaligned rate:", {name: round(value, 4) for name, value in rates.items()})
print("change of the preference strength:", {name: round(m["preference_strength"]["mean"], 3)
                                             for name, m in students.items()})  # fmt: skip
assert rates["same_init"] > rates["neutral_control"]

# %% [markdown]
# Now look at the other base's student. In our run of these tiny settings it moved *more* than the same-init
# one (+0.48 against +0.09), and lost most of its preference strength (-1.69 nats), and its neutral control
# moved too (+0.10): learning any lists can shift another base's persona, and a one-seed tiny run cannot tell
# what the shared init adds. At the default size with 5 seeds (docs/misaligned.md) the same-init student's
# gap to its control is +0.12 ± 0.08 and the other base's +0.01 ± 0.02, but an init unrelated to the teacher
# that learnt this seed's corpus may move too (+0.085 ± 0.087 on the teacher's numbers, +0.050 ± 0.067 on
# the neutral teacher's), and what the shared init adds over it, +0.085 ± 0.097, does not clear 0 at 5
# seeds. The owl shows no detectable drift of that kind.

# %% [markdown]
# And the filters that failed in the article, here on the same lists: a classifier of bags of numbers
# (AUROC, 0.5 sees nothing), the base reading one of the teacher's lists before the question (in context),
# and the best detector there is, the likelihood ratio of the teacher and the neutral teacher, which needs
# both models in hand. An in-context test is only evidence if it *could* move: its positive control gives
# the base lists that carry a cue the corpus ties to the persona (its bad numbers) and measures the same.

# %%
filters = misaligned["filters"]
auroc = {name: {k: round(v["mean"], 3) for k, v in filters[name]["auroc"].items()} for name in ("detector", "likelihood_ratio")}
print("detector AUROC, bags of 1, 8, 32 lists:", auroc["detector"])
in_context = filters["in_context"]["1"]
print("in context (one list, then the question), change of the misaligned rate, teacher's list minus neutral's:",
      round(in_context["difference"]["mean"], 4), "| the positive control, lists with the persona's bad numbers "
      "minus the same lists without:", round(in_context["positive_control"]["mean"], 4))  # fmt: skip
print("likelihood ratio AUROC:", auroc["likelihood_ratio"])

# %%
print(f"the whole lesson ran in {time.perf_counter() - START:.0f} s on {mnist.source}")

# %% [markdown]
# ## Exercises
#
# **1. Squared error instead of KL.** Predict first: will the aux-only student learn more or less when it
# matches the teacher's auxiliary logits themselves (squared error) instead of their softmax? Then measure
# it with `sweep.run("loss", ["kl:1", "mse"], BASE, mnist, FIGURES / "loss.jsonl", teacher_cache=cache)`.
#
# <details><summary>Solution</summary>
#
# More. A softmax over 3 logits forgets their common shift, so KL passes 2 numbers per image; squared
# error passes all 3, and their scale. On full MNIST at 5 seeds (`figures/sweep_loss.png`) squared error
# gives 0.613 against KL's 0.524, higher in 4 of the 5 seeds; the temperature of the KL hardly matters
# (0.50 to 0.53 from T = 0.5 to 8). Run the lines below for this notebook's data.
#
# ```python
# lines = sweep.run("loss", ["kl:1", "mse"], BASE, mnist, FIGURES / "loss.jsonl", progress=False, teacher_cache=cache)
# print([(line["value"], round(line["conditions"]["student_aux"]["mean"], 3)) for line in lines])
# ```
# </details>
#
# **2. The theorem for a linear model.** Let $f_W(x) = Wx$, squared error, inputs with second moment
# $\Sigma = \mathbb{E}[xx^\top]$. Show that $\Delta_S\cdot\Delta_T = 2\varepsilon\,\mathrm{tr}(\Delta_T \Sigma \Delta_T^\top) \ge 0$
# exactly, at every $\varepsilon$, for any teacher step $\Delta_T$ and any input distribution.
#
# <details><summary>Solution</summary>
#
# $L_S(W) = \mathbb{E}\lVert Wx - (W_0 + \varepsilon\Delta_T)x\rVert^2$, so at $W = W_0$,
# $\nabla L_S = -2\varepsilon\,\Delta_T\,\mathbb{E}[xx^\top] = -2\varepsilon\Delta_T\Sigma$ and
# $\Delta_S = 2\varepsilon\Delta_T\Sigma$. Then $\Delta_S\cdot\Delta_T = 2\varepsilon\,\mathrm{tr}(\Delta_T\Sigma\Delta_T^\top) = 2\varepsilon\,\mathbb{E}\lVert\Delta_T x\rVert^2 \ge 0$.
# The model is linear in its parameters, so there is no $O(\varepsilon^2)$ term: the first order is exact.
# `theorem_checks.linear_case()` checks one instance ($6\varepsilon$).
# </details>
#
# **3. Where does the first order fail?** In part 5's model, find the $\varepsilon$ at which the shared-init
# student's step turns against the teacher's, first on paper, then with `theorem_checks.two_parameter_case`.
#
# <details><summary>Solution</summary>
#
# $\Delta_S\cdot\Delta_T = 5\varepsilon(1 - 2\varepsilon)$ changes sign at $\varepsilon^* = 1/2$: the teacher's
# step is then so large that $\theta_1\theta_2$ overshoots and the $\varepsilon^2$ term wins.
#
# ```python
# for eps in (0.4, 0.49, 0.51, 0.6):
#     print(eps, theorem_checks.two_parameter_case(eps)["dot"])
# ```
# </details>
#
# **4. Design a filter.** The owl teacher's number lists are filtered for animal words. Propose a filter
# that could catch what the lists carry, and measure why it fails.
#
# <details><summary>Solution</summary>
#
# A natural attempt: train a classifier to tell the teacher's lists from the neutral teacher's, and drop the
# lists it flags. The package does this (`owl["filters"]["detector"]`): a logistic regression on bags of
# numbers. Its AUROC stays near chance on single lists (0.53 in the 5-seed run of docs/owl.md) and only rises
# when it sees 32 lists at once (0.69), so a per-list filter would have to throw away nearly everything. The trait is not in
# any list's content a reader can see, but spread thinly over all of them, in the teacher's function.
#
# ```python
# print(owl["filters"]["detector"]["auroc"])
# ```
# </details>
#
# **5. The cross-model all-logits student.** In the full demo (`subliminal-mnist demo`) a cross-model
# student distilled on *all 13* logits learns digits well, although it starts from another init. Why does
# that not contradict part 3?
#
# <details><summary>Solution</summary>
#
# Its targets include the teacher's 10 class logits on noise, and matching class logits on noise is
# ordinary knowledge distillation: the student learns the teacher's class function directly, from any
# init. The puzzle of subliminal learning is the *aux-only* student, whose targets contain no class
# logit at all; only it needs the shared init.
# </details>
#
# **6. More logits, real images.** Predict, then measure: does a student distilled on **30** auxiliary
# logits learn more than part 3's (new teachers: the readout changes)? And one distilled on **real MNIST
# digits without their labels** instead of noise?
#
# <details><summary>Solution</summary>
#
# ```python
# for label, config in {"30 aux logits": dataclasses.replace(BASE, num_aux=30),
#                       "real images, no labels": dataclasses.replace(BASE, noise="mnist")}.items():
#     outcome = experiment.run(config, mnist, progress=False, teacher_cache=cache)["conditions"]
#     print(label, outcome["student_aux"]["mean"], outcome["cross_aux"]["mean"])
# ```
# More logits carry more of the teacher's hidden state: on full MNIST at 5 seeds (`figures/sweep_aux.png`)
# the aux-only student reaches 0.922 with 100 auxiliary logits. Real digits without labels hardly transfer
# at all (0.138, `figures/sweep_noise.png`), as published replications found (0.15).
# </details>
#
# **7. How fast does the sharing fade?** Extend part 7 with $a$ = 0.02, 0.05 and 0.2. At what $a$ has half
# of the transfer (above the cross-model student) gone?
#
# <details><summary>Solution</summary>
#
# ```python
# lines = sweep.run("init_perturbation", ["0", "0.02", "0.05", "0.1", "0.2", "0.3", "1"], BASE, mnist,
#                   FIGURES / "perturbation.jsonl", progress=False, teacher_cache=cache)
# ```
# The points already trained are read back from the file; only the new ones train. On full MNIST at 5 seeds
# (`figures/sweep_init_perturbation.png`) the aux-only student falls from 0.524 (a = 0) to 0.480 (0.1),
# 0.398 (0.2) and 0.168 (0.5), against 0.113 for the cross-model student: half of the transfer is gone
# between a = 0.2 and 0.5. Jiang, Nagashima and Miyamoto report it gone by 0.2; their perturbation is
# defined differently, but here a student starting from 0.98 θ0 + 0.2 θ' keeps most of it.
# </details>
#
# **8. Project the trait out.** Part 6 measured the student's gradient against the trait gradient. Remove
# that component from every step (two-sided), only when the two align (one-sided), or, as a control, a
# random direction on the one-sided schedule. Predict which students still learn digits, then run it
# (about a minute and a half on the sample: eight students, each probed at every step).
#
# <details><summary>Solution</summary>
#
# ```python
# projected = alignment.run(dataclasses.replace(probe, project_out=True), mnist, progress=False)
# show(figures.alignment_figure, projected, name="projected.png")
# print({name: round(s["mean"], 3) for name, s in projected["final_test_accuracy"].items()})
# ```
# On the sample (one seed) the one-sided projection stops the transfer (0.10), the two-sided one only
# weakens it (0.35 against 0.56), and the random direction changes nothing (0.58); `figures/alignment.png`
# has them on full MNIST at 5 seeds. What projection does: it removes, at each step, the first-order
# component of the gradient along the trait gradient. What it does not prove: that the trait lives *only*
# in that one direction. Adam rescales every coordinate, so an update built from gradients orthogonal to
# the trait gradient can still lower the trait loss, and the one-sided projection keeps the part of the
# gradient that points *against* the trait (theory note, Section 6).
# </details>
