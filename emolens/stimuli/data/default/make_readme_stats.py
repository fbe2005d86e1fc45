"""Regenerate the statistics section of this folder's README.md from the corpus itself.

Run after changing any data file:  python emolens/stimuli/data/default/make_readme_stats.py
"""
from pathlib import Path

from emolens.stimuli import load_corpus
from emolens.stimuli.readme import update_readme

if __name__ == "__main__":
    readme = Path(__file__).with_name("README.md")
    changed = update_readme(readme, load_corpus("default"))
    print(f"{readme}: {'updated' if changed else 'already current'}")
