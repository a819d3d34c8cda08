"""The worklist web app."""
