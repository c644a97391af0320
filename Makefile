.PHONY: help demo test
help:  ## Show the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'
demo:  ## Build and run the demo
	bash scripts/demo
test:  ## Lint and run every test (what CI runs)
	bash scripts/test
