"""The Streamlit journey app (`flightlog ui`): pages in `pages/`, chart builders in `charts.py`,
archive access, caching and deep-link parameters in `state.py`, the launcher in `server.py`."""
