"""Evaluation metrics computed on the host from all of a split's predictions at once.

Unlike the objectives' (sum, count) metrics, which are averaged batch by batch on device, these
need the whole split: F1, Matthews correlation, ROC AUC, rank correlations, entity-level NER
scores and SQuAD's answer matching. `classification` covers single- and multi-label
classification, regression and the GLUE tasks' official metrics (numpy);
`entities` scores IOB2 tag sequences (seqeval); `squad` re-implements the official SQuAD
v1.1/v2.0 evaluation script. Inputs are numpy arrays or lists; outputs are python floats.
"""
