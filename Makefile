# The two commands of the README:
#   make demo   set up this machine and run the whole local stack (ends with the URL)
#   make test   set up this machine and run every test CI runs
# Both need root (apt packages, /var/lib/canary-chat); run them as root or with sudo.
.PHONY: demo test setup lint stop

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/ansible-playbook site.yml

test: setup
	bash scripts/test.sh

lint:
	bash scripts/test.sh lint

# Stop the local stack (all its supervised programs and supervisord).
stop:
	.venv/bin/ansible-playbook teardown.yml
