"""One forward pass of a model, looked at directly rather than recorded: they take the model itself, so
they use the engine (`find_layers`) and may draw (`colordim.views`).

- `summary.py`: every module with its output shape and what `layers=` takes;
- `maps.py`: a layer's output for one input, channel by channel, and its heat map over the input.

Not on the recording path (`colordim.engine`: hook, routing, plan, buffer row, move, `Recording`): a
probe runs the model once itself and reads the output it gets.
"""
