"""The Streamlit journey app (`flightlog ui`): pages in `views/` (not `pages/`: next to the entry script
Streamlit would switch to its old multipage mode), chart builders in `charts.py`,
archive access, caching and deep-link parameters in `state.py`, the launcher in `server.py`."""
