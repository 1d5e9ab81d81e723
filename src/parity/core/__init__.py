"""Pure core: traces, checkpoint names, metrics, tolerances, comparison. numpy only."""
