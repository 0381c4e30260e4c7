"""The owl experiment on a tiny transformer: a preference carried by number sequences.

A base model learns a synthetic corpus (animal questions and number lists). Its
teacher copy is fine-tuned to answer "owl"; the teacher then writes number lists,
strictly filtered. A student copy of the same base, trained only on those numbers,
comes to prefer owls too; one from another base does not. Every training is
`train.fit`, the loop the MNIST experiment uses.

Modules: `vocab` (words and tokens), `corpus` (the synthetic corpus, number
prompts, the filter), `transformer` (the model, with a pure init/apply pair and
cached decoding), `sampling` (continuations and answers), `config` (`LLMConfig`,
each stage's part of it), `fine_tuning`, `number_data`, `experiment` (the stages,
the controls, the measurements, the run), `first_step`, `analysis` (the entangled
numbers, the filters), `conditions` (the students, each a start and its data, and
the paired differences), `summary` (the results over seeds, and the table), `traits`
(the misaligned persona: a trait is data), `defenses` (what stops it: each defense a
change of the students' data or recipe), `dose` (the dose-responses and the LoRA sweep).
"""
