"""Helpers any module may use: the one path layer (`fileio`: local paths and URIs, atomic
writes), reading one config field (`config_field`) and the command-line flags the commands
share (`flags`).

May import: nothing else from the package (the bottom layer, so that every module can import
it without a cycle).
"""
