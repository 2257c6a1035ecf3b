"""Sphinx configuration of rnnfast's API reference, built from the docstrings.

Build (warnings are errors, as in CI):

    python -m sphinx -W --keep-going -b html docs/api build/docs

The reference documents the installed package: rnnfast and its compiled core must import,
and so must torch and mpi4py for the pages on rnnfast.torch and rnnfast.distributed.
"""

# The installed package, not python/ of the checkout: its compiled core lives only in the
# installed copy (or in python/ itself after an editable install, which is then what this
# import finds anyway).
import rnnfast

project = "rnnfast"
author = "The rnnfast developers"
copyright = "the rnnfast developers"
version = release = rnnfast.__version__

extensions = ["sphinx.ext.autodoc", "numpydoc"]

# The docstrings are numpydoc; class pages list their methods through autodoc's :members:,
# so numpydoc's own member tables (which need autosummary) are off.
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
# Every documented object must have a docstring: an undocumented public name fails the build.
numpydoc_validation_checks = {"GL08"}
# Private helpers that autodoc never shows but numpydoc would still check.
numpydoc_validation_exclude = {r"\._[a-z]", r"\.__[a-z]+__$"}

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": True}
# Keep the signatures as written (defaults like np.float32 stay readable).
autodoc_preserve_defaults = True

default_role = "code"
html_theme = "alabaster"
html_title = f"rnnfast {release} API reference"
html_static_path = []
exclude_patterns = ["_build"]
