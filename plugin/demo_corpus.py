"""A small built-in corpus for ``embedrank demo``: short factual passages and a few queries."""

from __future__ import annotations

PASSAGES: tuple[tuple[str, str], ...] = (
    ("astro", "The Sun is a G-type main-sequence star that makes up about 99.8% of the mass of "
              "the Solar System."),
    ("astro", "Jupiter is the largest planet in the Solar System; its Great Red Spot is a storm "
              "larger than Earth."),
    ("astro", "A light-year is the distance light travels in one year, about 9.46 trillion "
              "kilometres."),
    ("astro", "The Moon's gravity causes most of the tides in Earth's oceans."),
    ("astro", "Mars appears red because iron oxide, or rust, covers much of its surface."),
    ("astro", "Saturn's rings are made mostly of ice particles with some rock and dust."),
    ("biology", "Photosynthesis turns light energy, water and carbon dioxide into glucose and "
                "oxygen in the chloroplasts of plant cells."),
    ("biology", "Mitochondria produce most of a cell's supply of ATP, the molecule that stores "
                "chemical energy."),
    ("biology", "DNA is a double helix of two strands held together by base pairs: adenine with "
                "thymine, cytosine with guanine."),
    ("biology", "The human heart has four chambers: two atria and two ventricles."),
    ("biology", "Honey bees communicate the direction of flowers to their hive with a waggle "
                "dance."),
    ("biology", "Octopuses have three hearts and blue, copper-based blood."),
    ("history", "The Great Wall of China was built over many centuries to protect against raids "
                "from the northern steppe."),
    ("history", "The printing press with movable type was developed by Johannes Gutenberg around "
                "1440 in Mainz."),
    ("history", "The Roman Empire in the West ended in 476 when Romulus Augustulus was deposed."),
    ("history", "The Apollo 11 mission landed the first humans on the Moon in July 1969."),
    ("history", "The Rosetta Stone, found in 1799, helped scholars decipher Egyptian "
                "hieroglyphs."),
    ("history", "The Magna Carta, sealed in 1215, limited the powers of the English king."),
    ("tech", "Python is a programming language created by Guido van Rossum and first released "
             "in 1991."),
    ("tech", "A vector database stores embeddings and finds the nearest ones to a query vector "
             "with approximate search such as HNSW."),
    ("tech", "HTTPS encrypts web traffic with TLS so that others on the network cannot read it."),
    ("tech", "A reranker reads a query and a document together and scores how well the document "
             "answers the query."),
    ("tech", "Git is a distributed version control system created by Linus Torvalds in 2005."),
    ("tech", "ONNX is an open format for machine learning models that many runtimes can "
             "execute."),
    ("geography", "The Nile and the Amazon are the two longest rivers on Earth."),
    ("geography", "Mount Everest, at 8,849 metres, is the highest mountain above sea level."),
    ("geography", "The Pacific is the largest and deepest of Earth's oceans."),
    ("geography", "The Sahara is the largest hot desert in the world, covering much of North "
                  "Africa."),
    ("geography", "Iceland sits on the Mid-Atlantic Ridge, where two tectonic plates pull "
                  "apart."),
    ("geography", "Lake Baikal in Siberia is the deepest lake in the world and holds about a "
                  "fifth of Earth's unfrozen fresh water."),
)

QUERIES: tuple[str, ...] = (
    "Why is Mars red?",
    "Who invented the printing press?",
    "Which organelle makes the cell's energy?",
    "What is the deepest lake?",
    "How does a reranker differ from a vector search?",
)


def records() -> list[dict]:
    """The passages as ingestable records: ``{"id", "topic", "text"}``."""
    return [{"id": f"p{i:02d}", "topic": topic, "text": text}
            for i, (topic, text) in enumerate(PASSAGES)]
