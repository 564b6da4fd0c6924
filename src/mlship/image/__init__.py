"""Container images: build context (Dockerfile + wheelhouse + model), engine access, push."""
