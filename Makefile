# The two commands of the README:
#   make demo   set up this machine and run the whole local stack (ends with the URL)
#   make test   set up this machine and run every test CI runs
.PHONY: demo test setup lint unit bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/ansible-playbook site.yml

test: setup
	bash scripts/test.sh

lint:
	bash scripts/test.sh lint
