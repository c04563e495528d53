"""The in-cluster controller: turns device announcements into mesh resources and bundles."""
