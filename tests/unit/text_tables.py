"""A hand-made *text* outcome table where the right routing is known, for strategies that
embed text (skills, glider, the router): ``mathy`` answers the calculus questions,
``lawyer`` the contract-law ones, ``medic`` the clinical ones; each is wrong elsewhere."""

from __future__ import annotations

import numpy as np

from routing.outcomes import OutcomeTable

QUESTIONS = {
    "math": [
        "Compute the derivative of x squared times sine x.",
        "Evaluate the definite integral of x squared from 0 to 3.",
        "Find the derivative of the natural logarithm of x.",
        "What is the integral of cosine x with respect to x?",
        "Use the chain rule to find the derivative of e to the 2x.",
        "Solve the integral of 1 over x using calculus.",
        "Find the limit and the derivative of a polynomial function.",
        "Compute the area under a curve with a definite integral.",
    ],
    "law": [
        "Is a contract void if it was signed under duress?",
        "What remedies exist for breach of contract in common law?",
        "Does a verbal contract bind the parties in court?",
        "Can a minor enforce a contract for necessaries under contract law?",
        "What damages does a court award for breach of a sales contract?",
        "Is consideration required for a contract to be valid in court?",
        "When is a contract term an unenforceable penalty clause?",
        "How does a court interpret an ambiguous contract clause?",
    ],
    "health": [
        "A patient presents with fever and cough; what is the likely diagnosis?",
        "What is the first-line treatment for a patient with hypertension?",
        "Which diagnosis fits a patient with chest pain and sweating?",
        "What dose of the drug treats a patient with a bacterial infection?",
        "How should a clinician treat a patient with type 2 diabetes?",
        "What diagnosis explains a patient with jaundice and fatigue?",
        "What is the treatment for a patient with asthma attacks?",
        "Which test confirms the diagnosis of anemia in a patient?",
    ],
}
EXPERTS = {"math": "mathy", "law": "lawyer", "health": "medic"}
QUERIES = {
    "mathy": "Calculate the derivative and the integral of x cubed.",
    "lawyer": "Is a contract binding when one party breaches it in court?",
    "medic": "What is the diagnosis and treatment for a patient with a rash?",
}


def text_table(experts: list[str] | None = None) -> OutcomeTable:
    """Questions × experts; each expert right on its own domain and wrong elsewhere."""
    names = experts or list(EXPERTS.values())
    rows = [(domain, text) for domain, texts in QUESTIONS.items() for text in texts]
    scores = np.array(
        [[1.0 if EXPERTS[domain] == name else 0.0 for name in names] for domain, _ in rows],
        dtype=np.float32,
    )
    return OutcomeTable(
        ids=[f"{domain}-{i}" for i, (domain, _) in enumerate(rows)],
        texts=[text for _, text in rows],
        domains=[domain for domain, _ in rows],
        experts=names,
        scores=scores,
    )
