"""Text pipelines for the sklearn runtime: a model whose first step is a text vectorizer takes one document
(a string) per instance, not a table of numbers."""

from __future__ import annotations

from typing import Any

from mlship.errors import ArtifactError


def text_step(model: Any) -> Any:
    """The text vectorizer (CountVectorizer, TfidfVectorizer, HashingVectorizer) a model starts with, if any:
    the model itself, or the first step of a Pipeline (nested pipelines included). Such a model takes one
    document per row, not a table of numbers."""
    if not type(model).__module__.startswith("sklearn.") and not hasattr(model, "steps"):
        return None  # neither scikit-learn's nor a pipeline (a user's own estimator): not a text model
    from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer
    from sklearn.pipeline import Pipeline

    for _ in range(8):
        if isinstance(model, (CountVectorizer, HashingVectorizer)):
            return model
        if not isinstance(model, Pipeline) or not model.steps:
            return None
        model = model.steps[0][1]
    return None


def check_text_input(vectorizer: Any) -> None:
    """Refuse a vectorizer that reads files: input='filename' would open paths sent by clients."""
    kind = getattr(vectorizer, "input", "content")
    if kind != "content":
        raise ArtifactError(
            f"The model's {type(vectorizer).__name__} has input={kind!r}: it reads {kind}s, not the text itself.",
            why="A served model gets the text in the request; opening files named by clients is not safe.",
            fix="Fit the pipeline with input='content' (the default) and pass it the documents' text.",
        )


def text_problems(model: Any, features: list[str]) -> list[str]:
    """Why input.features does not fit a text model (one feature, a string per instance); [] if it does."""
    vectorizer = text_step(model)
    try:
        check_text_input(vectorizer)
    except ArtifactError as exc:
        return [exc.message]
    if len(features) != 1:
        return [f"the model takes one text per instance (its first step is a {type(vectorizer).__name__}) "
                f"but input.features lists {len(features)} features"]
    return []
