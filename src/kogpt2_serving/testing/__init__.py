"""Small models in the real file formats, for tests, benchmarks and the demo-model script.

Not part of the runtime: nothing under ``kogpt2_serving`` outside this package imports it.
"""
from .models import (CORPUS, grow_vocabulary, make_hf_test_model, make_kogpt2_size_model,  # noqa: F401
                     make_test_model, random_params, store_with_md5, train_hf_tokenizer, train_tokenizer)
from .ports import free_port  # noqa: F401
