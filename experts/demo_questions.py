"""Who the demo experts are: descriptions, skills and example questions, written for Conclave.

Data only; :mod:`experts.demo` builds the (tiny, untrained) models behind them.
"""

from __future__ import annotations

GENERAL = {
    "description": "All-round assistant for general knowledge, geography, history and trivia.",
    "instruction": "Answer general knowledge questions about the world, history and culture.",
    "domain": "general",
    "skills": ["general knowledge", "history", "geography", "trivia", "culture"],
    "examples": [
        "What is the capital of Australia?",
        "Who painted the ceiling of the Sistine Chapel?",
        "In which year did the Berlin Wall fall?",
        "Which river flows through Cairo?",
        "How many players are on a football team on the pitch?",
        "What language is spoken in Brazil?",
        "Who wrote the novel Pride and Prejudice?",
        "What is the tallest mountain in Africa?",
    ],
}

CODE = {
    "description": "Programming specialist: writes, explains and debugs Python and SQL code.",
    "instruction": "Write, explain and fix code, especially Python functions and SQL queries.",
    "domain": "code",
    "skills": ["python", "programming", "algorithms", "debugging", "sql"],
    "examples": [
        "Write a Python function that reverses a string.",
        "How do I read a CSV file with pandas?",
        "What is the difference between a list and a tuple in Python?",
        "Why does my recursive function raise RecursionError?",
        "Write a SQL query that counts orders per customer.",
        "What is the time complexity of binary search?",
        "How do I remove duplicates from a list while keeping the order?",
        "Explain what a Python decorator does.",
    ],
}

MATH = {
    "description": "Mathematics specialist: algebra, calculus, probability and arithmetic.",
    "instruction": "Solve mathematics problems: equations, derivatives, integrals, probability.",
    "domain": "math",
    "skills": ["algebra", "calculus", "arithmetic", "probability", "geometry"],
    "examples": [
        "What is the derivative of x^3 + 2x?",
        "Solve 3x + 7 = 22 for x.",
        "What is the probability of rolling two sixes with two dice?",
        "Integrate sin(x) from 0 to pi.",
        "What is 17 times 24?",
        "Is 221 a prime number?",
        "What is the area of a circle with radius 3?",
        "Find the sum of the first 100 positive integers.",
    ],
}

MEDICINE = {
    "description": "Medical specialist: symptoms, diseases, drugs and physiology.",
    "instruction": "Answer medical questions about symptoms, diagnosis, treatment and drugs.",
    "domain": "health",
    "skills": ["medicine", "pharmacology", "physiology", "diagnosis", "anatomy"],
    "examples": [
        "What are the common symptoms of type 2 diabetes?",
        "How does ibuprofen reduce inflammation?",
        "What is the normal resting heart rate for an adult?",
        "Which vitamin deficiency causes scurvy?",
        "What is the difference between a virus and a bacterium?",
        "What does a high white blood cell count indicate?",
        "How is hypertension usually treated?",
        "Which organ produces insulin?",
    ],
}

LAW = {
    "description": "Legal specialist: contracts, torts, criminal and constitutional law.",
    "instruction": "Answer legal questions about contracts, liability, rights and procedure.",
    "domain": "law",
    "skills": ["contract law", "torts", "criminal law", "constitutional law", "procedure"],
    "examples": [
        "What makes a contract legally binding?",
        "What is the difference between a misdemeanor and a felony?",
        "Can a verbal agreement be enforced in court?",
        "What does negligence mean in tort law?",
        "What is the statute of limitations?",
        "Is a contract signed under duress valid?",
        "What rights does the Fifth Amendment protect?",
        "What is the burden of proof in a civil case?",
    ],
}

SCIENCE = {
    "description": "Science specialist: physics, chemistry and biology explained simply.",
    "instruction": "Explain physics, chemistry and biology questions and phenomena.",
    "domain": "science",
    "skills": ["physics", "chemistry", "biology", "astronomy", "units"],
    "examples": [
        "Why is the sky blue?",
        "What is the chemical formula of table salt?",
        "How fast does light travel in a vacuum?",
        "What is photosynthesis?",
        "What is Newton's second law of motion?",
        "Why do objects float in water?",
        "What is the pH of pure water?",
        "How does DNA store genetic information?",
    ],
}

# Extra text the demo tokenizers are trained on, besides the questions above.
CORPUS = [
    "The capital of France is Paris. The Nile flows through Cairo.",
    "def reverse(text): return text[::-1]  # slicing with a negative step",
    "SELECT customer_id, COUNT(*) FROM orders GROUP BY customer_id;",
    "The derivative of x^2 is 2x; the integral of cos(x) is sin(x) + C.",
    "1 + 1 = 2, 2 * 3 = 6, 10 / 4 = 2.5, 7 - 9 = -2",
    "The patient reports fever, cough and fatigue; blood pressure is 120/80.",
    "A contract needs offer, acceptance, consideration and intention to be bound.",
    "Water boils at 100 degrees Celsius at sea level; light travels at 299,792 km/s.",
]
