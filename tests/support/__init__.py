"""What the tests share that is not a fixture: the repository's paths and ../shared, free ports,
live servers, the shrunk demo config, and writers of odd, hostile and crafted files. Imported as
`support.<module>` (pytest.ini puts tests/ on the path); fixtures stay in the conftest.py files."""
