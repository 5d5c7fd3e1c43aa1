"""Small helpers any module of the package may use (command-line flags shared by the commands).

Modules here import nothing else from the package, except `fileio`, so that every other module,
the lowest layers included, can import them without a cycle.
"""
