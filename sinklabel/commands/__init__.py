"""One module per ``sinklabel`` command: ``configure(parser)`` adds options, ``run(args)`` acts."""
