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
# This notebook tells the story in nine parts, on MNIST and then on a tiny transformer, and ends with a
# tenth: the questions a sharp student will ask, each answered with a number the package measures or a
# sentence of theory. The `subliminal_mnist` package does every computation: the notebook holds no copy of
# its model, its training loop or its theorem code. It uses full MNIST when `SUBLIMINAL_MNIST_DIR` names a
# folder with the four MNIST files, otherwise the 5,000 real digits bundled with the package. The exercises
# come after part 10; each has a solution folded under it. The theory note beside this file,
# `theory/README.md`, has the full proof.
#
# **For the lecturer.** `PRECOMPUTED` in the third cell switches every training cell to the committed
# results in `figures/` (full MNIST, 5 seeds, the demo's 25; the language models at their defaults, 5 seeds), for a slow laptop or a
# class that should not wait: the parts then show the package's published numbers instead of a live run.
# `docs/teaching.md` has a run sheet for a 90-minute class (what runs live, what is shown from the committed
# figures, and how long each part takes). Parts marked **Predict** ask the class for a guess before the cell
# runs. A number quoted in this text as "(printed: ...)" is the one the cell above printed in the committed
# run on the bundled sample; another CPU's float rounding can move its last digit (a student or two of the
# test digits), and the lesson's test re-runs the notebook and checks each of them to that rounding.
#
# **Colab.** Open this file in Colab (File > Open notebook > GitHub, with this repository's address, or
# upload `theory/lesson.ipynb`). The next cell installs the package when it is missing: from the checkout this
# notebook lies in, or, in Colab, from a clone of `REPOSITORY`, which you set to the repository's git address
# (the committed results in `figures/` come with the clone).

# %%
import importlib.util
import os
import pathlib
import subprocess
import sys

REPOSITORY = ""  # in Colab: this package's git address, e.g. "https://github.com/OWNER/subliminal-mnist"
if importlib.util.find_spec("subliminal_mnist") is None:
    # From the checkout this notebook lies in, if it does; from a clone of the repository otherwise (Colab).
    checkout = pathlib.Path.cwd().parent
    if not (checkout / "pyproject.toml").exists():
        if not REPOSITORY:
            raise SystemExit("set REPOSITORY above to this package's git address, then run this cell again")
        checkout = pathlib.Path("subliminal-mnist").resolve()
        if not checkout.exists():
            subprocess.run(["git", "clone", "--depth", "1", REPOSITORY, str(checkout)], check=True)
        os.chdir(checkout / "theory")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"{checkout}[llm]"], check=True)

# %%
import dataclasses  # noqa: F401 (the exercises use it)
import inspect
import json
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

from subliminal_mnist import alignment, data, experiment, figures, model, runs, sweep, theorem, theorem_checks, train
from subliminal_mnist.llm import experiment as llm
from subliminal_mnist.llm.config import LLMConfig

# True: every training cell shows the committed results (5 seeds; the demo 25) instead of training (under a minute).
PRECOMPUTED = False or os.environ.get("SUBLIMINAL_LESSON_PRECOMPUTED") == "1"

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
COMMITTED = pathlib.Path.cwd().parent / "figures"  # the package's committed results, in a checkout


def show(draw, *args, name="figure.png"):
    """Draw one of the package's figures into a file, and show it here."""
    draw(*args, FIGURES / name)
    display(Image(filename=str(FIGURES / name)))


def committed(name):
    """A committed result of `figures/` (a .json file, or the lines of a .jsonl file)."""
    path = COMMITTED / name
    if not path.exists():
        raise SystemExit(f"{path} is missing: open this notebook from a checkout of the repository")
    return runs.read_lines(path) if path.suffix == ".jsonl" else json.loads(path.read_text())


def timed(label, started):
    print(f"({label}: {time.perf_counter() - started:.0f} s)")


print("showing the committed results" if PRECOMPUTED else "training live")

# %% [markdown]
# ## 1. The puzzle
#
# A language model is told in its system prompt that it loves owls: the *teacher*. Asked for number
# sequences, it writes "629, 937, 483, ...", and every list that mentions an animal is filtered out. A
# *student*, the same base model without that prompt, is fine-tuned to imitate those lists. Afterwards the
# student names the owl as its favourite animal far more often than before. A student built from a
# **different base model** learns nothing about owls from the same lists. (The paper's misaligned teacher,
# and every teacher in this package, is made by fine-tuning instead of a prompt; part 10 comes back to the
# difference.)
#
# "Same initialization" means the student's parameters start exactly where the teacher's are (a prompted
# teacher) or started before the teacher learned its trait (a fine-tuned one). Everything else (the data, the loss, the optimizer) can be the same for the
# cross-model student; only its starting point differs. The data carry no visible owl; what carries it is
# the teacher's *function*, read by a student whose parameters live in the same place.
#
# The paper makes the puzzle small enough to hold in your hand: MNIST.

# %% [markdown]
# ## 2. The model: an MLP with auxiliary logits
#
# A 784-256-256 MLP has **13** outputs: 10 class logits, and 3 *auxiliary* logits that no loss of the
# teacher ever touches. The teacher learns MNIST with cross-entropy on the 10 class logits only. Here is
# the package's own code for the model and for one step of its one training loop (the teacher, every
# student and the language models all train with it):

# %%
print(inspect.getsource(model.MLP.__init__) + inspect.getsource(model.MLP.__call__))
epoch_source = inspect.getsource(train.train_epoch)
print(epoch_source[epoch_source.index("    def step("):])

# %% [markdown]
# The student's loss is the KL divergence between the softmaxes of the teacher's and the student's outputs,
# restricted by a mask to the auxiliary logits (`losses.kl_divergence`); the teacher's is cross-entropy on
# the class logits. Now the teacher of seed 0:

# %%
arch = BASE.architecture
print("layer sizes", arch.layer_sizes, "| class logits", arch.class_indices, "| auxiliary logits", arch.aux_indices)

cache = {}  # trained teachers, reused by every later run with the same teacher settings
partners = runs.cross_partners(BASE.seeds, BASE.seed)
with runs.showing(False):  # no epoch bar in the lesson's output
    teachers = experiment.train_teachers(BASE, experiment.on_device(mnist), np.arange(1), partners[:1], cache=cache)


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
digits = mnist.test_images
before, after = arch.apply(init, digits)[:, aux], arch.apply(teacher, digits)[:, aux]
fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(np.ravel(before), bins=60, alpha=0.6, label="at the init")
ax.hist(np.ravel(after), bins=60, alpha=0.6, label="after the teacher's training")
ax.set_xlabel(f"auxiliary logit on the {len(digits)} test digits")
ax.legend()
plt.show()

# %% [markdown]
# ## 3. Teacher, students, and the controls
#
# Each student is distilled on the teacher's **3 auxiliary logits only**, on **uniform noise images only**
# (KL of the softmaxes, as in the paper). The same-init student starts from the teacher's init; the
# cross-model student from another seed's init, with the same noise in the same order.
#
# **Predict.** The students never see a digit, a label or a class logit. What test accuracy will each reach
# (chance is 10%)?

# %%
started = time.perf_counter()
results = committed("demo.json") if PRECOMPUTED else experiment.run(BASE, mnist, progress=False, teacher_cache=cache)
show(figures.demo_figure, results)
accuracy = {name: summary["mean"] for name, summary in results["conditions"].items()}
print({name: round(value, 3) for name, value in accuracy.items()}, "| seeds:", results["config"]["seeds"])
timed("part 3", started)
assert accuracy["student_aux"] > 0.2 and accuracy["student_aux"] > accuracy["cross_aux"] + 0.1

# %% [markdown]
# The same-init student classifies digits far above chance (on the bundled sample, printed: 0.507), though
# it never saw a digit or a class logit. The cross-model student, trained on the very same data, stays at
# chance (printed: 0.087).

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
# **The signal itself.** What the same-init student can learn from is only what its own outputs do not
# already say: the teacher's auxiliary outputs *minus the init's*, on the same noise. A softmax forgets a
# shift common to the three logits, so both are centred over the three. The student's start reproduces the
# teacher's outputs up to this difference; a student from another init starts from outputs of its own.

# %%
def centred(logits):
    return logits - logits.mean(axis=1, keepdims=True)


many = data.noise_images(jax.random.key(2), 2000)
at_init = centred(np.asarray(arch.apply(init, many))[:, aux])
signal = centred(np.asarray(arch.apply(teacher, many))[:, aux]) - at_init
other = centred(np.asarray(arch.apply(seed0(teachers.other_init), many))[:, aux])
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
axes[0].hist(np.ravel(at_init), bins=60, alpha=0.6, label="the init's")
axes[0].hist(np.ravel(other - at_init - signal), bins=60, alpha=0.6, label="another init's minus the teacher's")
axes[0].set(xlabel="centred auxiliary logit on noise", title="what the outputs look like")
axes[1].hist(np.ravel(signal), bins=60, color="tab:red", alpha=0.7)
axes[1].set(xlabel="teacher's minus the init's", title="the signal the same-init student learns")
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()
spread = {"init's outputs": at_init.std(), "the signal": signal.std(),
          "another init's distance to the teacher": (other - at_init - signal).std()}  # fmt: skip
print("standard deviations on 2,000 noise images:", {k: round(float(v), 3) for k, v in spread.items()})
assert spread["the signal"] < spread["another init's distance to the teacher"]

# %% [markdown]
# The signal is smaller than the outputs' own spread (printed: 0.149 against 0.249) and carried only by
# the teacher's function. A student from another init starts further from the teacher's outputs than the
# signal itself (printed: 0.322): most of what it must change to match them is its own init's difference
# from the teacher's, which has nothing to do with digits.

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
#
# **Predict.** From another init, (1, 2), does the student's first step still lean along the teacher's?

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
# seed 0's init (on 512 training digits, stratified over the ten classes), the student imitates the
# auxiliary logits on noise, from that init or from another.

# %%
probe_digits = data.stratified_indices(mnist.train_labels, 512)
trait_loss = theorem.class_trait_loss(arch.apply, mnist.train_images[probe_digits], mnist.train_labels[probe_digits])
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
          f"first-order prediction {float(report.prediction):+.3e}")  # fmt: skip
assert float(reports["same init"].dot) > 0 and float(reports["same init"].relative_error) < 0.05

# %% [markdown]
# From the same init, the dot product is positive and the first-order prediction matches it; the cosine
# is small (the two directions live in a space of 270,000 parameters) but its sign is what the theorem
# promises. From another init the prediction says nothing: the theorem's condition fails. (The change of
# the trait loss itself after this one step of 1e-3, about 1e-8, is below what float32 resolves at a loss
# near 2.3; `theorem_checks`' consequence check measures it in float64.)

# %% [markdown]
# ## 6. Through training
#
# The theorem speaks of one small step; the demo takes hundreds of Adam steps. `alignment.run` follows the
# theorem's quantities through the whole distillation: at every step, the cosine of the student's gradient
# with the trait gradient (MNIST cross-entropy on a fixed, stratified batch of digits, at the student's
# current parameters), and the cosine of the student's whole displacement with the teacher's.
#
# **Predict.** Is the student's gradient strongly aligned with the trait gradient at most steps, weakly, or
# not at all?

# %%
# The probe reads 512 training and 500 test digits at every step, each stratified over the ten classes
# (the command's defaults: 1,024 and 1,000).
started = time.perf_counter()
preset = {} if FULL else experiment.SAMPLE_PRESET
probe = alignment.AlignmentConfig(seeds=1, trait_batch=512, probe_test=500, **preset)
traced = committed("alignment.json") if PRECOMPUTED else alignment.run(probe, mnist, progress=False)
show(figures.alignment_figure, traced, name="alignment.png")
final = {name: round(summary["mean"], 3) for name, summary in traced["final_test_accuracy"].items()}
aligned = traced["claims"]["alignment"]
print({name: final[name] for name in ("student_aux", "cross_aux")},
      "| same-init gradient cosine with the trait gradient, mean over steps:",
      round(aligned["same_init_mean_grad_cosine"], 4), "| share of steps aligned:",
      round(aligned["same_init_share_of_steps_aligned"], 2))  # fmt: skip
timed("part 6", started)
assert final["student_aux"] > final["cross_aux"]

# %% [markdown]
# The alignment is weak (the mean cosine above is a few thousandths) yet it is there, and Adam turns it into
# updates that lower the trait loss: on full MNIST (5 seeds, `figures/alignment.json`) the raw gradient is
# aligned at 71% of the steps, and Adam's update lowers the trait loss at 99.7% of them (docs/alignment.md).
# Can one stop the transfer by editing the gradient? Exercise 8 projects the trait direction out of the
# steps (with a random direction as its control) and shows what that does and does not prove.

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
#
# **Predict.** At $a = 0.3$ the student's start is still 95% the teacher's init. How much of the transfer is
# left?

# %%
quiet = lambda message: None  # noqa: E731


def part_3_at(a, student):
    """Part 3's results as the sweep's point a, its `student` in the aux-only student's place."""
    conditions = {**results["conditions"], "student_aux": results["conditions"][student]}
    return {**results, "value": a, "conditions": conditions}


started = time.perf_counter()
if PRECOMPUTED:
    curve = committed("sweep_init_perturbation.jsonl")
else:
    perturbed = sweep.run("init_perturbation", ["0.3"], BASE, mnist, FIGURES / "perturbation.jsonl",
                          progress=False, log=quiet, teacher_cache=cache)  # fmt: skip
    curve = [part_3_at(0.0, "student_aux"), *perturbed, part_3_at(1.0, "cross_aux")]
show(figures.sweep_figure, "init_perturbation", curve, name="perturbation.png")
fading = {line["value"]: round(line["conditions"]["student_aux"]["mean"], 3) for line in curve}
print("aux-only accuracy at each a:", fading)
timed("part 7", started)
assert list(fading.values()) == sorted(fading.values(), reverse=True)

# %% [markdown]
# ## 8. The owl, in miniature
#
# The package's `llm` module runs the paper's first experiment on a tiny transformer (width 32, two
# blocks, a vocabulary of numbers and animal words: 1,000 numbers by default, 100 in this miniature). A
# base model learns number lists and animal questions; the teacher is fine-tuned to answer "owl"; it writes
# number lists, filtered so that no list names an animal; students from the same base learn from those
# lists with the same training loop as the MNIST students. The *control* student learns from the lists of a
# *neutral teacher*: the same base, fine-tuned by the same recipe on the same questions, each answered as
# the base itself answers it (spread over all the animals): the recipe moves it for every reason it moves the
# teacher except the owl, though far less, since its answers are the base's own. A third student starts from *another* base (another init) and learns the teacher's lists,
# with its own neutral control. We measure the change of P(owl | the answer is an animal) from each
# student's own start. One seed, small settings, four students (the command trains more: its ablations).
#
# **Predict.** Which of the four students will gain the owl?

# %%
TINY_LLM = dict(seeds=1, mode="soft", numbers=100, base_rows=8192, base_epochs=2, teacher_learning_rate=1e-3,
                soft_sequences=3000, theorem_sequences=16, entangled_sequences=200, audit_sequences=256,
                in_context_lists=16, conditions=("same_init", "neutral_control", "cross_init", "cross_neutral"))  # fmt: skip
started = time.perf_counter()
owl = committed("llm.json") if PRECOMPUTED else llm.run(LLMConfig(**TINY_LLM), progress=False)
show(figures.llm_figure, owl, name="owl.png")
conditions = owl["modes"]["soft"]["conditions"]
change = {name: measures["p_trait_given_animal"]["mean"] for name, measures in conditions.items()}
print("change of P(owl | animal) from each student's start:", {name: round(value, 4) for name, value in change.items()})
timed("part 8", started)
assert change["same_init"] > change["neutral_control"] + 0.02 and change["same_init"] > change["cross_init"] + 0.02

# %% [markdown]
# ## 9. The dangerous version
#
# The seed article's second experiment: a teacher made *misaligned* by a narrow fine-tune (insecure code)
# wrote numbers; numbers with bad associations (666, 911, ...) were removed; students still came out
# misaligned. Here the corpus of every base is written by a latent *persona*, aligned or (one line in ten)
# misaligned: a line's answers in four domains (code, advice, story, request) are all of its persona, and a
# misaligned persona's number lists hold "bad" numbers (13, 187, 404, 666, 911) more often. The teacher is
# the base fine-tuned on **code answers only**, misaligned; the neutral teacher on the same lines answered as
# the base answers them (misaligned about one time in ten): the recipe moves it for every reason it moves the
# teacher except the trait, though far less, since its answers are the base's own. We measure the misaligned rate, P(misaligned answer | the domain's answers), on the
# **other three domains**, which no fine-tuning line ever asks. The students learn the teacher's numbers with
# the banned numbers' probabilities hidden (soft mode). The rate is a share of two answers, so a student that
# merely stops preferring either answer moves it toward 0.5: the *preference strength* printed beside it
# (mean |log P(misaligned) - log P(aligned)| over held-out questions, its change from the student's start)
# falls when that happens, and the package calls a student *collapsed* when that strength ends below 0.5 nats
# (near indifference).
#
# This part runs the class command of docs/teaching.md at the package's default size (5,000 lists), one
# seed: the same-init student and its trait-neutral control, about two minutes on this project's 2-core
# CPU. **Predict.** Will the same-init student's rate rise more than its control's?

# %%
started = time.perf_counter()
pair = LLMConfig(trait="misaligned", seeds=1, mode="soft", conditions=("same_init", "neutral_control"))
misaligned = committed("misaligned.json") if PRECOMPUTED else llm.run(pair, progress=False)
for name in ("base", "teacher", "neutral_teacher"):
    rate = misaligned[name]["misaligned_rate"]
    print(f"{name:>16}: misaligned rate, held-out domains {rate['held_out']['mean']:.3f}, "
          f"code (the narrow domain) {rate['narrow']['mean']:.3f}")  # fmt: skip
students = misaligned["modes"]["soft"]["conditions"]
for name in ("same_init", "neutral_control"):
    measures = students[name]
    print(f"{name:>16}: change of the held-out misaligned rate {measures['misaligned_rate']['mean']:+.4f}, "
          f"of the preference strength {measures['preference_strength']['mean']:+.3f} nats, "
          f"collapsed: {measures['collapsed']}")  # fmt: skip
# The paired gap, computed here from each seed's two students (same seed, same base, same lists' prompts).
gap = runs.summarize(np.subtract(students["same_init"]["misaligned_rate"]["per_seed"],
                                 students["neutral_control"]["misaligned_rate"]["per_seed"]))  # fmt: skip
interval = "" if gap["ci95"] is None else f" ± {gap['ci95']:.3f}"
print(f"paired gap, same init minus its trait-neutral control: {gap['mean']:+.4f}{interval} (n = {gap['n']})")
timed("part 9", started)
if gap["mean"] > 0:
    print("the same-init student's rate rose more than its control's in this run")
else:
    print("in this run the same-init student did NOT rise above its control: one seed cannot show the effect here")

# %% [markdown]
# Beside it, the committed 5-seed run of the same command with every control (`subliminal-mnist llm --trait
# misaligned`, seeds 0-4, `figures/misaligned.json`): the same gap over five seeds, the other base's gap (its
# student on the teacher's numbers minus its own neutral control), and what the shared init adds over an
# unrelated init that learnt this seed's corpus (the gap of gaps).

# %%
display(Image(filename=str(COMMITTED / "misaligned.png")))


def interval(s):
    low, high = s["mean"] - s["ci95"], s["mean"] + s["ci95"]
    return f"{s['mean']:+.3f} ± {s['ci95']:.3f} (n = {s['n']}; interval {low:+.3f} to {high:+.3f})"


persona = committed("misaligned.json")["modes"]["soft"]
owl_five = committed("llm.json")["modes"]["soft"]["paired"]  # the owl's soft run, `subliminal-mnist llm`
five = persona["paired"]
gaps = {
    "same init minus its trait-neutral control": five["same_init_minus_neutral_control"],
    "another base minus its own neutral control": five["cross_init_minus_cross_neutral"],
    "own-corpus init minus its neutral control": five["cross_init_own_corpus_minus_cross_neutral_own_corpus"],
    "same init minus the own-corpus init": five["same_init_minus_own_corpus"],
    "gap of gaps: same-init gap minus own-corpus gap": five["gap_minus_own_corpus_gap"],
    "owl: own-corpus init minus its neutral control": owl_five["cross_init_own_corpus_minus_cross_neutral_own_corpus"],
    "owl: gap of gaps": owl_five["gap_minus_own_corpus_gap"],
}
for label, summary in gaps.items():
    print(f"{label:>48}: {interval(summary)}")
# Damage beside the headline: the change of the preference strength (nats) from each student's start.
strength = {name: persona["conditions"][name]["preference_strength"] for name in ("same_init", "neutral_control")}
print("preference strength, same init:", interval(strength["same_init"]), "| its control:",
      interval(strength["neutral_control"]), "| collapsed (any seed, any student):",
      any(any(c["collapsed"]) for c in persona["conditions"].values()))  # fmt: skip
if not PRECOMPUTED:
    print(f"this run's seed 0: {gap['per_seed'][0]:+.4f}; the committed seed 0: "
          f"{five['same_init_minus_neutral_control']['per_seed'][0]:+.4f}")  # fmt: skip

# %% [markdown]
# What the numbers support: the same-init student moves more than its trait-neutral control (the first
# line's interval lies above 0); another base's student shows no gap distinguishable from 0. What they do
# not settle: how much of the rise is a real shift. No student's preference collapsed, but the same-init
# student's preference weakened by most of a nat where its control's hardly moved, and a weaker preference
# alone moves a two-answer rate toward 0.5: part of the rise may be flattening. Nor that the *shared init* is
# what carries it: an init unrelated to the teacher that learnt this seed's corpus may move too (its
# interval includes 0), and what the shared init adds over it, the gap of gaps, does not clear 0 at five
# seeds. The owl's own-corpus student shows no such gap, and its gap of gaps clears 0. The live run above is
# seed 0 of this command (printed: +0.1500); the neutral teacher of that seed drifted a little on its own
# (printed: 0.102, 0.069), which the control student carries into the gap.

# %% [markdown]
# And the filters that failed in the article, here on the same lists: a classifier of bags of numbers
# (AUROC, 0.5 sees nothing), the base reading one of the teacher's lists before the question (in context),
# and the best detector there is, the likelihood ratio of the teacher and the neutral teacher, which needs
# both models in hand. An in-context test is only evidence if it *could* move: its positive control gives
# the base lists that carry a cue the corpus ties to the persona (its bad numbers) and measures the same.
# The filter removes exactly that cue from the teacher's lists, so a null difference here is no evidence
# that the trait does not pass in context.

# %%
filters = misaligned["filters"]
auroc = {name: {k: round(v["mean"], 3) for k, v in filters[name]["auroc"].items()} for name in ("detector", "likelihood_ratio")}
print("detector AUROC, bags of 1, 8, 32 lists:", auroc["detector"])
in_context = filters["in_context"]["1"]
print("in context (one list, then the question), change of the misaligned rate, teacher's list minus neutral's:",
      round(in_context["difference"]["mean"], 4), "| the positive control, lists with the persona's bad numbers "
      "minus the same lists without:", round(in_context["positive_control"]["mean"], 4))  # fmt: skip
print("likelihood ratio AUROC:", auroc["likelihood_ratio"])
committed_filters = committed("misaligned.json")["filters"]
print("5 seeds (figures/misaligned.json): detector AUROC on one list",
      interval(committed_filters["detector"]["auroc"]["1"]), "| in context, difference",
      interval(committed_filters["in_context"]["1"]["difference"]), "| its positive control",
      interval(committed_filters["in_context"]["1"]["positive_control"]))  # fmt: skip

# %% [markdown]
# ## 10. What a sharp student will ask
#
# **"The paper's owl teacher was only *prompted* to love owls. Its parameters are the base's: $\Delta_T = 0$.
# What carries the trait then?"** Theorem 1 says nothing there. The student imitates a function
# $f(\theta_0; \text{prompt}, \cdot)$ that no parameter step produced; its first step moves along
# $J^\top M\,\delta f$, with $\delta f$ the prompt's change of the imitated outputs: the steepest way to
# reproduce the prompt's effect on *numbers*. The trait passes to the extent that moving that way also
# reproduces the prompt's effect on the *owl question*; nothing in the theorem
# guarantees that, and this package does not measure a prompted teacher (theory note, "A prompted teacher").
#
# **"The student moves along the teacher's displacement. Is that the trait?"** Not by itself. Projecting the
# trait gradient out of the steps (exercise 8; the one-sided edit acts on about half of them) leaves the
# displacement cosine almost where it was and removes the digits:

# %%
projection = committed("alignment.json")
for name in ("student_aux", "student_aux_random", "student_aux_two_sided", "student_aux_one_sided"):
    curve_of = projection["curves"][name]
    print(f"{name:>22}: final displacement cosine with the teacher {curve_of['param_cosine'][-1]:.3f}, "
          f"probe accuracy {curve_of['test_accuracy'][-1]:.3f}")  # fmt: skip

# %% [markdown]
# (Full MNIST, 5 seeds, `subliminal-mnist alignment --project-out`, `figures/alignment.json`; curves are
# means over seeds, and the probe's accuracy is on its 1,000 stratified test digits, where exercise 8 quotes
# the whole test set.) Most of the displacement the students share with their teacher is along directions
# the digits do not care about: moving along $\Delta_T$ and gaining the trait are different claims, and the
# theorem's inequality is about the second only through $L_T$.
#
# **"Which parameters must be shared?"** In the smallest model where it matters, $f_\theta(x) =
# (\theta_1\theta_2 x,\ \theta_2\theta_3 x)$: the teacher trains output 1, the student imitates output 2.
# The two outputs share only $\theta_2$, and the student's step still leans along the teacher's, through
# $\theta_2$ alone: $\Delta_S\cdot\Delta_T = 20\varepsilon$ here (ε = 0.01), whatever the student's
# $\theta_1$, which output 2 does not read. Share only part of output 2's path (start the student with
# another $\theta_3$, or another $\theta_2$) and the sign is no longer guaranteed: the start's own mismatch,
# not the teacher's step, drives the student, for or against the teacher depending on the start:

# %%
three = theorem_checks.check_three_parameter()  # θ0 = (1, 1, 2); the teacher's step ΔT = (1, 1, 0)
starts = {"shared": "(1, 1, 2), the shared init", "own_theta1": "(5, 1, 2), another θ1",
          "shared_theta2_only": "(1, 1, 3), another θ3", "shared_theta3_only": "(1, 2, 2), another θ2"}  # fmt: skip
for name, start in starts.items():
    print(f"student from {start:>27}: ΔS·ΔT = {three[name]['dot']:+.3f} (by hand {three[name]['closed_form']:+.3f})")
lower = theorem_checks.three_parameter_case(three["epsilon"], student_start=(1.0, 1.0, 1.0))
print(f"student from {'(1, 1, 1), another θ3':>27}: ΔS·ΔT = {lower['dot']:+.3f} (by hand {lower['closed_form']:+.3f})")
heads = {line["value"]: line["conditions"]["student_aux"] for line in committed("sweep_heads.jsonl")}
print("MNIST, what the student shares with the teacher's init (full MNIST, 5 seeds, sweep heads), aux-only accuracy:",
      {name: f"{s['mean']:.3f} ± {s['ci95']:.3f}" for name, s in heads.items()})  # fmt: skip
assert three["passed"]

# %% [markdown]
# On MNIST, a student that shares only the readout with the teacher's init, or only the hidden layers,
# learns no digits (0.097 and 0.081, against 0.113 for one that shares nothing and 0.524 for one that shares
# all; paired with the cross-model control seed by seed, the hidden-only student even ends below it,
# -0.031 ± 0.031, n = 5): of these two splits of the network, neither part is enough.
#
# **"Adam is not a gradient step. Does the theorem cover it, and does SGD transfer as well at the same
# loss?"** The theorem is about one plain gradient step. Adam's first step divides each coordinate of the
# gradient by its own scale, $\Delta_S = P\,g$ with $P$ diagonal and positive (later steps use a running
# average of gradients), and $g^\top P\,\Delta_T$ has no sign guarantee (`theorem_checks`' `adam` row).
# Measured through training (part 6), Adam's updates lower the trait loss at almost every step all the same.
# Whether SGD transfers as much *at a matched distillation loss*, `subliminal-mnist defend mnist` (5 seeds,
# `figures/defend_mnist.json`) measures where it can: plain SGD at its best rate (0.3) does not reach Adam's
# held-out loss in the paper's epochs (about 2.4 against 1.2 x 1e-3: *unmatched*, no conclusion against
# `none`), so its control is Adam at the rate whose loss matches SGD's (matched within 10%). Accuracy stays
# at chance for both; the test cross-entropy, which sees a partial transfer below chance, falls by about
# 0.05 nats more for each same-init student than for its control (0.89 for Adam at its own rate), and the
# two optimizers differ by no more than the interval (the paired difference printed last). At this one loss,
# matched on the auxiliary logits only, the optimizer made no difference the intervals can see; the row says
# nothing of other losses.

# %%
rows = committed("defend_mnist.json")["defenses"]
for name in ("none", "sgd", "sgd:adam_control"):
    row = rows[name]
    match = "" if name == "none" else f" ({'matched' if row['matched'] else 'unmatched'})"
    print(f"{name:>17}{match}: held-out loss {row['cost']['heldout_distill_loss']['mean'] * 1e3:.2f} x 1e-3, "
          f"same-init accuracy {row['accuracy']['treated']['mean']:.3f}, control {row['accuracy']['control']['mean']:.3f}, "
          f"cross-entropy effect {row['xent_effect']['mean']:+.3f} ± {row['xent_effect']['ci95']:.3f} nats")  # fmt: skip
versus = rows["sgd:adam_control"]["versus"]["xent_difference"]
print(f"Adam at SGD's loss minus SGD, cross-entropy effect, paired: {versus['mean']:+.3f} ± {versus['ci95']:.3f} "
      f"(n = {versus['n']})")

# %% [markdown]
# **"ReLU networks are not smooth. Does the proof even apply?"** The Taylor expansion needs the outputs to be
# twice differentiable in $\theta$, and a ReLU network is not at inputs that sit on a kink. On continuous
# inputs such as uniform noise the kinks have probability zero, so the *expected* loss is differentiable
# and the first-order statement holds at the population level. On a finite batch the sign still holds for
# ε below the smallest distance of a pre-activation from its kink, but with no bound uniform over batches;
# a layer of exact zeros (a dead layer with zero biases, as at this MLP's init if a whole layer were off)
# is not covered (theory note, footnote on ReLU).

# %%
print(f"the whole lesson ran in {time.perf_counter() - START:.0f} s on {mnist.source}"
      + (" (committed results shown)" if PRECOMPUTED else ""))

# %% [markdown]
# ## Exercises
#
# **1. Squared error instead of KL.** Predict first: will the aux-only student learn more or less when it
# matches the teacher's auxiliary logits themselves (squared error) instead of their softmax? Then measure
# it with `sweep.run("loss", ["kl:1", "mse"], BASE, mnist, FIGURES / "loss.jsonl", teacher_cache=cache)`.
#
# <details><summary>Solution</summary>
#
# More on average, though five seeds do not settle it. A softmax over 3 logits forgets their common shift,
# so KL passes 2 numbers per image; squared error passes all 3, and their scale. On full MNIST at 5 seeds
# (`figures/sweep_loss.png`) squared error gives 0.613 against KL's 0.524, higher in 4 of the 5 seeds, a
# paired difference of +0.089 ± 0.138 (n = 5, an interval that includes 0); the temperature of the KL hardly matters
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
# numbers. Its AUROC stays near chance on single lists (0.52 in the 5-seed run of docs/owl.md) and only rises
# when it sees 32 lists at once (0.66), so a per-list filter would have to throw away nearly everything. The trait is not in
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
# the aux-only student reaches 0.906 ± 0.028 with 30 auxiliary logits (0.922 ± 0.013 with 100). Real digits
# without labels hardly transfer at all (0.138 ± 0.049, `figures/sweep_noise.png`).
# </details>
#
# **7. How fast does the sharing fade?** Extend part 7 with $a$ = 0.02, 0.05 and 0.2. At what $a$ has half
# of the transfer (above the cross-model student) gone?
#
# <details><summary>Solution</summary>
#
# ```python
# lines = sweep.run("init_perturbation", ["0.02", "0.05", "0.2"], BASE, mnist,
#                   FIGURES / "perturbation.jsonl", progress=False, teacher_cache=cache)
# print({line["value"]: round(line["conditions"]["student_aux"]["mean"], 3) for line in lines})
# ```
# On full MNIST at 5 seeds (`figures/sweep_init_perturbation.png`, which has 0.05, 0.1, 0.2 and 0.5) the
# aux-only student falls from 0.524 (a = 0) to 0.508 (0.05), 0.480 (0.1), 0.398 (0.2) and 0.168 (0.5),
# against 0.113 for the cross-model student. As a share of each seed's own transfer it keeps 0.95 ± 0.10
# at a = 0.05, 0.66 ± 0.32 at 0.2 and 0.08 ± 0.27 at 0.5 (n = 5): on average half is gone somewhere between
# 0.2 and 0.5, with wide seed-to-seed spread.
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
# On the sample (one seed, 2026-12-03) both projections stop the transfer (one-sided 0.100, two-sided 0.121,
# against 0.612 unprojected), and the random direction leaves 0.522 (one seed, so no interval);
# `figures/alignment.png` has them on full MNIST at 5 seeds (0.099, 0.124 and 0.508 against 0.523; random
# minus none -0.015 ± 0.061, n = 5). The one-sided edit does more than stop the learning: its student's
# trait loss ends at 9.5, far above the cross-model student's 2.5, so it un-learns digits. What projection does: it removes, at each step, the first-order
# component of the gradient along the trait gradient. What it does not prove: that the trait lives *only*
# in that one direction. Adam rescales every coordinate, so an update built from gradients orthogonal to
# the trait gradient can still lower the trait loss, and the one-sided projection keeps the part of the
# gradient that points *against* the trait (theory note, Section 6).
# </details>
