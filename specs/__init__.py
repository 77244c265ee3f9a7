"""The spec library: YAML specs shipped as package data (see ``rescompile.library``)."""
