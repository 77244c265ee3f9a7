"""The emission plan: IR -> how the model is written (framework-free), for every renderer."""
