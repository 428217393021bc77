pytest_plugins = ["hf_explvec.testing.pytest_plugin"]
