"""Paper experiments assembled from the package's data, model and metric modules."""
