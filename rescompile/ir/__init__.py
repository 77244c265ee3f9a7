"""Graph IR: op vocabulary, graph, lowering, verifier, printers."""
