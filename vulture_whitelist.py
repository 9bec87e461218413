"""Names vulture cannot see used (``make test`` runs ``vulture distrec jobs vulture_whitelist.py``).

Only two kinds belong here: names a framework calls or an outside object reads, and, marked
below, library functions that today only the tests call (issue 15 item 4 moves them out).
"""

from distrec import cli

# Typer calls the CLI commands; torch calls extra_repr; HF Trainer calls its callbacks (jobs/bench); `python -c` calls write_tiny (model/backbone.py).
cli.data_fetch, cli.data_prepare, cli.data_tokenize, cli.retrieve, cli.crm_train, cli.compare, cli.evaluate
cli.eimf_train, cli.eimf_label, cli.eimf_experiment
_.extra_repr, _.on_step_begin, _.on_step_end  # noqa: F821
_.write_tiny  # noqa: F821

# Attributes set on objects that others read: Ray Data's context, tokenizers, HF's DeepSpeed hook.
_.enable_progress_bars, _.enable_operator_progress_bars, _.print_on_execution_start, _.preserve_order  # noqa: F821
_.pad_token, _.padding_side, _.truncation_side, _._hf_ds_config  # noqa: F821

# Result fields read by callers and tests (dataclass fields, dict keys built from locals).
_.variance, _.llm_time_s, _.encode_time_s, _.wall_time_s, _.adapter_flops  # noqa: F821
_.axis  # noqa: F821  (scipy.stats.bootstrap passes it to the statistic)

# Public accessors only the tests call today (a reader, the serving model, formulas users may want).
_.CTR_NAMES, _.read_hparams, _.serving_model  # noqa: F821
_.generator_parameter_count, _.find_instance_context, _.dense_params  # noqa: F821
